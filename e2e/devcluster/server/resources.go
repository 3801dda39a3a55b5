package main

import (
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// Scheme knows every built-in kind the server stores. There are no internal API
// types outside k8s.io/kubernetes, so the versioned types double as the internal
// version and conversion is the identity.
var (
	Scheme         = runtime.NewScheme()
	Codecs         = serializer.NewCodecFactory(Scheme)
	ParameterCodec = runtime.NewParameterCodec(Scheme)
)

// builtin describes one built-in resource served from etcd.
type builtin struct {
	gv         schema.GroupVersion
	resource   string
	singular   string
	shortNames []string
	namespaced bool
	hasStatus  bool
	newObj     func() runtime.Object
	newList    func() runtime.Object
}

func ns(gv schema.GroupVersion, resource, singular string, short []string, status bool, obj, list func() runtime.Object) builtin {
	return builtin{gv, resource, singular, short, true, status, obj, list}
}

func cluster(gv schema.GroupVersion, resource, singular string, short []string, status bool, obj, list func() runtime.Object) builtin {
	return builtin{gv, resource, singular, short, false, status, obj, list}
}

var (
	core   = corev1.SchemeGroupVersion
	apps   = appsv1.SchemeGroupVersion
	batch  = batchv1.SchemeGroupVersion
	coord  = coordinationv1.SchemeGroupVersion
	events = eventsv1.SchemeGroupVersion
	policy = policyv1.SchemeGroupVersion
	netw   = networkingv1.SchemeGroupVersion
	autos  = autoscalingv2.SchemeGroupVersion
	rbac   = rbacv1.SchemeGroupVersion
)

// builtins is what a Kubernetes operator and its tests touch; nothing more.
var builtins = []builtin{
	cluster(core, "namespaces", "namespace", []string{"ns"}, true, func() runtime.Object { return &corev1.Namespace{} }, func() runtime.Object { return &corev1.NamespaceList{} }),
	ns(core, "configmaps", "configmap", []string{"cm"}, false, func() runtime.Object { return &corev1.ConfigMap{} }, func() runtime.Object { return &corev1.ConfigMapList{} }),
	ns(core, "secrets", "secret", nil, false, func() runtime.Object { return &corev1.Secret{} }, func() runtime.Object { return &corev1.SecretList{} }),
	ns(core, "services", "service", []string{"svc"}, true, func() runtime.Object { return &corev1.Service{} }, func() runtime.Object { return &corev1.ServiceList{} }),
	ns(core, "serviceaccounts", "serviceaccount", []string{"sa"}, false, func() runtime.Object { return &corev1.ServiceAccount{} }, func() runtime.Object { return &corev1.ServiceAccountList{} }),
	ns(core, "events", "event", []string{"ev"}, false, func() runtime.Object { return &corev1.Event{} }, func() runtime.Object { return &corev1.EventList{} }),
	ns(core, "pods", "pod", []string{"po"}, true, func() runtime.Object { return &corev1.Pod{} }, func() runtime.Object { return &corev1.PodList{} }),
	ns(core, "endpoints", "endpoints", []string{"ep"}, false, func() runtime.Object { return &corev1.Endpoints{} }, func() runtime.Object { return &corev1.EndpointsList{} }),
	ns(core, "persistentvolumeclaims", "persistentvolumeclaim", []string{"pvc"}, true, func() runtime.Object { return &corev1.PersistentVolumeClaim{} }, func() runtime.Object { return &corev1.PersistentVolumeClaimList{} }),
	ns(apps, "deployments", "deployment", []string{"deploy"}, true, func() runtime.Object { return &appsv1.Deployment{} }, func() runtime.Object { return &appsv1.DeploymentList{} }),
	ns(apps, "statefulsets", "statefulset", []string{"sts"}, true, func() runtime.Object { return &appsv1.StatefulSet{} }, func() runtime.Object { return &appsv1.StatefulSetList{} }),
	ns(apps, "replicasets", "replicaset", []string{"rs"}, true, func() runtime.Object { return &appsv1.ReplicaSet{} }, func() runtime.Object { return &appsv1.ReplicaSetList{} }),
	ns(apps, "daemonsets", "daemonset", []string{"ds"}, true, func() runtime.Object { return &appsv1.DaemonSet{} }, func() runtime.Object { return &appsv1.DaemonSetList{} }),
	ns(batch, "jobs", "job", nil, true, func() runtime.Object { return &batchv1.Job{} }, func() runtime.Object { return &batchv1.JobList{} }),
	ns(events, "events", "event", []string{"ev"}, false, func() runtime.Object { return &eventsv1.Event{} }, func() runtime.Object { return &eventsv1.EventList{} }),
	ns(coord, "leases", "lease", nil, false, func() runtime.Object { return &coordinationv1.Lease{} }, func() runtime.Object { return &coordinationv1.LeaseList{} }),
	ns(policy, "poddisruptionbudgets", "poddisruptionbudget", []string{"pdb"}, true, func() runtime.Object { return &policyv1.PodDisruptionBudget{} }, func() runtime.Object { return &policyv1.PodDisruptionBudgetList{} }),
	ns(netw, "networkpolicies", "networkpolicy", []string{"netpol"}, false, func() runtime.Object { return &networkingv1.NetworkPolicy{} }, func() runtime.Object { return &networkingv1.NetworkPolicyList{} }),
	ns(autos, "horizontalpodautoscalers", "horizontalpodautoscaler", []string{"hpa"}, true, func() runtime.Object { return &autoscalingv2.HorizontalPodAutoscaler{} }, func() runtime.Object { return &autoscalingv2.HorizontalPodAutoscalerList{} }),
	ns(rbac, "roles", "role", nil, false, func() runtime.Object { return &rbacv1.Role{} }, func() runtime.Object { return &rbacv1.RoleList{} }),
	ns(rbac, "rolebindings", "rolebinding", nil, false, func() runtime.Object { return &rbacv1.RoleBinding{} }, func() runtime.Object { return &rbacv1.RoleBindingList{} }),
	cluster(rbac, "clusterroles", "clusterrole", nil, false, func() runtime.Object { return &rbacv1.ClusterRole{} }, func() runtime.Object { return &rbacv1.ClusterRoleList{} }),
	cluster(rbac, "clusterrolebindings", "clusterrolebinding", nil, false, func() runtime.Object { return &rbacv1.ClusterRoleBinding{} }, func() runtime.Object { return &rbacv1.ClusterRoleBindingList{} }),
}

// groupVersions served besides the core group, in discovery order.
var groupVersions = []schema.GroupVersion{apps, batch, coord, events, policy, netw, autos, rbac}

func init() {
	adders := []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, coordinationv1.AddToScheme,
		eventsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme, autoscalingv2.AddToScheme, rbacv1.AddToScheme,
	}
	for _, add := range adders {
		if err := add(Scheme); err != nil {
			panic(err)
		}
	}
	for _, b := range builtins {
		internal := schema.GroupVersion{Group: b.gv.Group, Version: runtime.APIVersionInternal}
		Scheme.AddKnownTypes(internal, b.newObj(), b.newList())
	}
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	Scheme.AddUnversionedTypes(schema.GroupVersion{Group: "", Version: "v1"},
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
}
