// devcluster-apiserver: a Kubernetes API server for Weir's tests and local stack,
// assembled from Debian's packaged Kubernetes libraries. It serves the real CRD
// machinery of k8s.io/apiextensions-apiserver (structural schemas, CEL rules,
// defaulting, pruning, status and scale subresources, server-side apply, watches,
// finalizers) and etcd-backed storage for the built-in kinds an operator touches.
// It runs no controllers: no garbage collector, no ReplicaSets, no kubelet; Weir's
// node agent plays the parts the tests need.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	corev1 "k8s.io/api/core/v1"
	extoptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	extapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	extopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	discoveryaggregated "k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilopenapi "k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/client-go/kubernetes"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/component-base/cli"
	"k8s.io/klog/v2"
	openapicommon "k8s.io/kube-openapi/pkg/common"

	builtinopenapi "devcluster/openapi"
)

func main() {
	o := extoptions.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	o.RecommendedOptions.Authentication.RemoteKubeConfigFileOptional = true
	o.RecommendedOptions.Authorization.RemoteKubeConfigFileOptional = true
	o.RecommendedOptions.Features.EnablePriorityAndFairness = false
	o.RecommendedOptions.Admission.DisablePlugins = []string{
		"MutatingAdmissionWebhook", "ValidatingAdmissionWebhook", "ValidatingAdmissionPolicy", "MutatingAdmissionPolicy",
	}
	o.RecommendedOptions.SecureServing.BindAddress = net.ParseIP("127.0.0.1")
	o.RecommendedOptions.SecureServing.BindPort = 6443

	cmd := &cobra.Command{
		Use:   "devcluster-apiserver",
		Short: "Kubernetes API server for local tests: CRDs plus etcd storage for built-in kinds, no controllers",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return run(c.Context(), o)
		},
	}
	cmd.SetContext(genericapiserver.SetupSignalContext())
	o.AddFlags(cmd.Flags())
	os.Exit(cli.Run(cmd))
}

func run(ctx context.Context, o *extoptions.CustomResourceDefinitionsServerOptions) error {
	config, err := o.Config()
	if err != nil {
		return err
	}
	definitions := func(ref openapicommon.ReferenceCallback) map[string]openapicommon.OpenAPIDefinition {
		defs := extopenapi.GetOpenAPIDefinitions(ref)
		for k, v := range builtinopenapi.GetOpenAPIDefinitions(ref) {
			defs[k] = v
		}
		return defs
	}
	// Server-side apply on built-in kinds needs their OpenAPI models.
	namer := openapi.NewDefinitionNamer(extapiserver.Scheme, clientscheme.Scheme, Scheme)
	gc := config.GenericConfig
	gc.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(utilopenapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(definitions), namer)
	gc.OpenAPIV3Config.Info.Title = "Kubernetes"
	gc.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(utilopenapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(definitions), namer)
	gc.OpenAPIConfig.Info.Title = "Kubernetes"

	// Built-in kinds share the CRDs' etcd, encoded as JSON through our scheme.
	etcd := *o.RecommendedOptions.Etcd
	stored := append([]schema.GroupVersion{corev1.SchemeGroupVersion}, groupVersions...)
	etcd.StorageConfig.Codec = Codecs.LegacyCodec(stored...)
	etcd.StorageConfig.EncodeVersioner = schema.GroupVersions(stored)
	etcd.StorageConfig.StorageObjectCountTracker = gc.StorageObjectCountTracker
	getter := etcd.CreateRESTOptionsGetter(&genericoptions.SimpleStorageFactory{StorageConfig: etcd.StorageConfig}, nil)

	server, err := config.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	gs := server.GenericAPIServer

	// apiextensions-apiserver normally sits behind kube-aggregator, which serves /apis.
	root := discoveryaggregated.WrapAggregatedDiscoveryToHandler(gs.DiscoveryGroupManager, gs.AggregatedDiscoveryGroupManager, nil)
	gs.Handler.GoRestfulContainer.Add(root.GenerateWebService("/apis", metav1.APIGroupList{}))
	publishCRDGroups(gs, server.Informers.Apiextensions().V1().CustomResourceDefinitions())

	stores, err := buildStorage(getter)
	if err != nil {
		return err
	}
	legacy := genericapiserver.NewDefaultAPIGroupInfo("", Scheme, ParameterCodec, Codecs)
	legacy.PrioritizedVersions = []schema.GroupVersion{corev1.SchemeGroupVersion}
	legacy.VersionedResourcesStorageMap["v1"] = stores[""]
	if err := gs.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &legacy); err != nil {
		return fmt.Errorf("core group: %w", err)
	}
	var groups []*genericapiserver.APIGroupInfo
	for _, gv := range groupVersions {
		g := genericapiserver.NewDefaultAPIGroupInfo(gv.Group, Scheme, ParameterCodec, Codecs)
		g.VersionedResourcesStorageMap[gv.Version] = stores[gv.Group]
		groups = append(groups, &g)
	}
	if err := gs.InstallAPIGroups(groups...); err != nil {
		return fmt.Errorf("api groups: %w", err)
	}
	gs.AddPostStartHookOrDie("devcluster-bootstrap-namespaces", bootstrapNamespaces)
	return gs.PrepareRun().RunWithContext(ctx)
}

// bootstrapNamespaces creates the namespaces every cluster has.
func bootstrapNamespaces(hc genericapiserver.PostStartHookContext) error {
	cs, err := kubernetes.NewForConfig(hc.LoopbackClientConfig)
	if err != nil {
		return err
	}
	for _, name := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		for attempt := 0; attempt < 50; attempt++ {
			_, err = cs.CoreV1().Namespaces().Create(hc, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			if err == nil || apierrors.IsAlreadyExists(err) {
				break
			}
			klog.Infof("creating namespace %s: %v (retrying)", name, err)
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}
