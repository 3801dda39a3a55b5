package main

import (
	"sort"
	"sync"

	"k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	extinformers "k8s.io/apiextensions-apiserver/pkg/client/informers/externalversions/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/tools/cache"
)

// publishCRDGroups keeps the legacy /apis group list in step with established CRDs.
// In a real cluster kube-aggregator does this; here nothing else would.
func publishCRDGroups(gs *genericapiserver.GenericAPIServer, crds extinformers.CustomResourceDefinitionInformer) {
	var mu sync.Mutex
	published := map[string]bool{}
	refresh := func() {
		mu.Lock()
		defer mu.Unlock()
		list, err := crds.Lister().List(labels.Everything())
		if err != nil {
			return
		}
		versions := map[string][]string{}
		for _, crd := range list {
			if !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Served {
					versions[crd.Spec.Group] = append(versions[crd.Spec.Group], v.Name)
				}
			}
		}
		for group, vs := range versions {
			sort.Slice(vs, func(i, j int) bool { return version.CompareKubeAwareVersionStrings(vs[i], vs[j]) > 0 })
			g := metav1.APIGroup{Name: group}
			seen := map[string]bool{}
			for _, v := range vs {
				if !seen[v] {
					seen[v] = true
					g.Versions = append(g.Versions, metav1.GroupVersionForDiscovery{GroupVersion: group + "/" + v, Version: v})
				}
			}
			g.PreferredVersion = g.Versions[0]
			gs.DiscoveryGroupManager.AddGroup(g)
			published[group] = true
		}
		for group := range published {
			if _, ok := versions[group]; !ok {
				gs.DiscoveryGroupManager.RemoveGroup(group)
				delete(published, group)
			}
		}
	}
	crds.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { refresh() },
		UpdateFunc: func(any, any) { refresh() },
		DeleteFunc: func(any) { refresh() },
	})
}
