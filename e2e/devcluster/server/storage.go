package main

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// mainREST is the etcd store of a built-in kind, with its short names and categories.
type mainREST struct {
	*genericregistry.Store
	shortNames []string
	categories []string
}

func (r *mainREST) ShortNames() []string { return r.shortNames }
func (r *mainREST) Categories() []string { return r.categories }

// statusREST serves the /status subresource from the same store.
type statusREST struct{ store *genericregistry.Store }

func (r *statusREST) New() runtime.Object { return r.store.New() }
func (r *statusREST) Destroy()            {}
func (r *statusREST) Get(ctx context.Context, name string, o *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, o)
}
func (r *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, cv rest.ValidateObjectFunc, uv rest.ValidateObjectUpdateFunc, _ bool, o *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// A status update never creates the object.
	return r.store.Update(ctx, name, objInfo, cv, uv, false, o)
}
func (r *statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}
func (r *statusREST) ConvertToTable(ctx context.Context, obj runtime.Object, t runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, obj, t)
}

// categoryAll lists the kinds `kubectl get all` shows.
var categoryAll = map[string]bool{"pods": true, "services": true, "deployments": true, "statefulsets": true, "replicasets": true, "daemonsets": true, "jobs": true}

// buildStorage returns, per API group, the REST storage of each resource and subresource.
func buildStorage(getter generic.RESTOptionsGetter) (map[string]map[string]rest.Storage, error) {
	out := map[string]map[string]rest.Storage{}
	for _, b := range builtins {
		b := b
		s := newStrategy(b)
		gr := schema.GroupResource{Group: b.gv.Group, Resource: b.resource}
		store := &genericregistry.Store{
			NewFunc:                   b.newObj,
			NewListFunc:               b.newList,
			DefaultQualifiedResource:  gr,
			SingularQualifiedResource: schema.GroupResource{Group: b.gv.Group, Resource: b.singular},
			CreateStrategy:            s,
			UpdateStrategy:            s,
			DeleteStrategy:            s,
			ResetFieldsStrategy:       s,
			TableConvertor:            rest.NewDefaultTableConvertor(gr),
		}
		attr := storage.DefaultNamespaceScopedAttr
		if !b.namespaced {
			attr = storage.DefaultClusterScopedAttr
		}
		if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: getter, AttrFunc: attr}); err != nil {
			return nil, fmt.Errorf("storage for %s: %w", gr, err)
		}
		if out[b.gv.Group] == nil {
			out[b.gv.Group] = map[string]rest.Storage{}
		}
		var cats []string
		if categoryAll[b.resource] {
			cats = []string{"all"}
		}
		out[b.gv.Group][b.resource] = &mainREST{store, b.shortNames, cats}
		if b.hasStatus {
			statusStore := *store
			ss := statusStrategy{s}
			statusStore.UpdateStrategy = ss
			statusStore.ResetFieldsStrategy = ss
			out[b.gv.Group][b.resource+"/status"] = &statusREST{&statusStore}
		}
	}
	return out, nil
}
