// Command validate checks the deploy files against the schemas of the programs that read them:
//
//	validate k8s FILE...          Kubernetes and Istio objects (multi-document YAML, e.g. kustomize
//	                              build output): strict decoding into k8s.io/api types (unknown
//	                              fields, wrong types and bad quantities fail) and into istio.io/api
//	                              protos for Istio specs
//	validate envoy FILE...        Envoy bootstrap files: Envoy's protos plus its protoc-gen-validate
//	                              rules, typed configs included (what `envoy --mode validate` starts with)
//	validate envoy-patch FILE...  partial typed configs ("@type" + fields), e.g. an EnvoyFilter MERGE
//	                              patch: field names and value types only
//
// Required fields and enums of Kubernetes objects are checked by the TypeScript test with the
// OpenAPI-derived validators of kubernetes-models; this program adds what those let through.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	// Typed configs the files name in "@type": imported so protojson can resolve them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_json_transcoder/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_web/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kubernetesKinds: the kinds this project deploys, by apiVersion/kind.
var kubernetesKinds = map[string]func() any{
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
}

// istioKinds: Istio objects are metadata + a spec that is one of istio.io/api's protos.
var istioKinds = map[string]func() proto.Message{
	"networking.istio.io/v1/DestinationRule":   func() proto.Message { return &networkingv1alpha3.DestinationRule{} },
	"networking.istio.io/v1/VirtualService":    func() proto.Message { return &networkingv1alpha3.VirtualService{} },
	"networking.istio.io/v1alpha3/EnvoyFilter": func() proto.Message { return &networkingv1alpha3.EnvoyFilter{} },
}

type validator interface{ ValidateAll() error }

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: validate k8s|envoy|envoy-patch FILE...")
		os.Exit(2)
	}
	mode := os.Args[1]
	failed := false
	for _, path := range os.Args[2:] {
		var err error
		switch mode {
		case "k8s":
			err = checkKubernetesFile(path)
		case "envoy":
			err = checkEnvoy(path, false)
		case "envoy-patch":
			err = checkEnvoy(path, true)
		default:
			fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
			os.Exit(2)
		}
		if err != nil {
			fmt.Printf("%s: %v\n", path, err)
			failed = true
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func checkKubernetesFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var errs []error
	for n := 0; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		if err := checkKubernetesObject(doc); err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func checkKubernetesObject(doc []byte) error {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	key := head.APIVersion + "/" + head.Kind
	name := fmt.Sprintf("%s %q", key, head.Metadata.Name)
	if newObject, ok := kubernetesKinds[key]; ok {
		if err := yaml.UnmarshalStrict(doc, newObject()); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	if newSpec, ok := istioKinds[key]; ok {
		var object struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   metav1.ObjectMeta `json:"metadata"`
			Spec       any               `json:"spec"`
		}
		if err := yaml.UnmarshalStrict(doc, &object); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		spec, err := yaml.Marshal(object.Spec)
		if err != nil {
			return err
		}
		specJSON, err := yaml.YAMLToJSON(spec)
		if err != nil {
			return err
		}
		if err := protojson.Unmarshal(specJSON, newSpec()); err != nil {
			return fmt.Errorf("%s: spec: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("%s: not a kind this validator knows; add it to kubernetesKinds or istioKinds", name)
}

func checkEnvoy(path string, patch bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	if patch {
		var a anypb.Any
		if err := protojson.Unmarshal(js, &a); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
		// A merge patch is partial by design: names and types are checked, required fields not.
		_, err := a.UnmarshalNew()
		return err
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return fmt.Errorf("constraints: %w", err)
	}
	return validateAnys(&b)
}

// validateAnys unpacks every Any (typed_config) below m and validates its contents too:
// ValidateAll does not look inside Anys.
func validateAnys(m proto.Message) error {
	var firstErr error
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				firstErr = fmt.Errorf("%s: %w", a.GetTypeUrl(), err)
				return
			}
			if v, ok := inner.(validator); ok {
				if err := v.ValidateAll(); err != nil && firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", a.GetTypeUrl(), err)
				}
			}
			walk(inner.ProtoReflect())
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return firstErr == nil
		})
	}
	walk(m.ProtoReflect())
	return firstErr
}
