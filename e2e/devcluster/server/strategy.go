package main

import (
	"context"
	"fmt"
	"reflect"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// strategy gives built-in kinds the generic behaviour of kube-apiserver that
// clients rely on: status is only written through /status, generation moves
// when the spec changes, object metadata is validated, and a few defaults are set.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	b builtin
}

func newStrategy(b builtin) strategy { return strategy{Scheme, names.SimpleNameGenerator, b} }

// structField returns the named field of a (pointer to a) struct, or an invalid Value.
func structField(obj runtime.Object, name string) reflect.Value {
	v := reflect.ValueOf(obj)
	if v.Kind() == reflect.Ptr {
		v = v.Elem()
	}
	return v.FieldByName(name)
}

func (s strategy) NamespaceScoped() bool { return s.b.namespaced }

func (s strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if s.b.hasStatus {
		if f := structField(obj, "Status"); f.IsValid() && f.CanSet() {
			f.Set(reflect.Zero(f.Type()))
		}
	}
	if m, err := meta.Accessor(obj); err == nil {
		m.SetGeneration(1)
	}
	applyDefaults(obj)
}

func (s strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.b.hasStatus {
		if nf, of := structField(obj, "Status"), structField(old, "Status"); nf.IsValid() && nf.CanSet() {
			nf.Set(of)
		}
	}
	nm, _ := meta.Accessor(obj)
	om, _ := meta.Accessor(old)
	nm.SetGeneration(om.GetGeneration())
	if ns, os := structField(obj, "Spec"), structField(old, "Spec"); ns.IsValid() && !reflect.DeepEqual(ns.Interface(), os.Interface()) {
		nm.SetGeneration(om.GetGeneration() + 1)
	}
	applyDefaults(obj)
}

func (s strategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	m, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	return apivalidation.ValidateObjectMetaAccessor(m, s.b.namespaced, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
}

func (s strategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	nm, _ := meta.Accessor(obj)
	om, _ := meta.Accessor(old)
	return apivalidation.ValidateObjectMetaAccessorUpdate(nm, om, field.NewPath("metadata"))
}

func (s strategy) WarningsOnCreate(context.Context, runtime.Object) []string           { return nil }
func (s strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string { return nil }
func (s strategy) Canonicalize(runtime.Object)                                          {}
func (s strategy) AllowCreateOnUpdate() bool                                            { return false }
func (s strategy) AllowUnconditionalUpdate() bool                                       { return true }

// GetResetFields tells server-side apply that the main resource does not own status.
func (s strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.b.hasStatus {
		return nil
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.b.gv.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// statusStrategy serves /status: only status (and not spec or labels) changes.
type statusStrategy struct{ strategy }

func (s statusStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if nf, of := structField(obj, "Spec"), structField(old, "Spec"); nf.IsValid() && nf.CanSet() {
		nf.Set(of)
	}
	nm, _ := meta.Accessor(obj)
	om, _ := meta.Accessor(old)
	metav1.ResetObjectMetaForStatus(nm, om)
}

func (s statusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.b.gv.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("metadata", "labels")),
	}
}

var lastClusterIP uint32 = 10

// applyDefaults sets the defaults of kube-apiserver that clients read back.
func applyDefaults(obj runtime.Object) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if o.Spec.Replicas == nil {
			one := int32(1)
			o.Spec.Replicas = &one
		}
		if o.Spec.Strategy.Type == "" {
			o.Spec.Strategy.Type = appsv1.RollingUpdateDeploymentStrategyType
		}
		if o.Spec.Strategy.Type == appsv1.RollingUpdateDeploymentStrategyType && o.Spec.Strategy.RollingUpdate == nil {
			q := intstr.FromString("25%")
			o.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxUnavailable: &q, MaxSurge: &q}
		}
		if o.Spec.RevisionHistoryLimit == nil {
			v := int32(10)
			o.Spec.RevisionHistoryLimit = &v
		}
		if o.Spec.ProgressDeadlineSeconds == nil {
			v := int32(600)
			o.Spec.ProgressDeadlineSeconds = &v
		}
	case *corev1.Service:
		if o.Spec.Type == "" {
			o.Spec.Type = corev1.ServiceTypeClusterIP
		}
		if o.Spec.SessionAffinity == "" {
			o.Spec.SessionAffinity = corev1.ServiceAffinityNone
		}
		if o.Spec.ClusterIP == "" && o.Spec.Type != corev1.ServiceTypeExternalName {
			n := atomic.AddUint32(&lastClusterIP, 1)
			o.Spec.ClusterIP = fmt.Sprintf("10.96.%d.%d", (n>>8)&0xff, n&0xff)
			o.Spec.ClusterIPs = []string{o.Spec.ClusterIP}
		}
		for i := range o.Spec.Ports {
			p := &o.Spec.Ports[i]
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
			if p.TargetPort.IntVal == 0 && p.TargetPort.StrVal == "" {
				p.TargetPort = intstr.FromInt32(p.Port)
			}
		}
	case *corev1.Namespace:
		if o.Status.Phase == "" {
			o.Status.Phase = corev1.NamespaceActive
		}
	case *corev1.Pod:
		if o.Status.Phase == "" {
			o.Status.Phase = corev1.PodPending
		}
	}
}
