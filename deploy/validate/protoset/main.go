// Command protoset compiles .proto files into a binary FileDescriptorSet that includes every
// import, what `protoc --include_imports --descriptor_set_out` writes. Envoy's gRPC-JSON transcoder
// reads it (deploy/envoy/edge.yaml: proto_descriptor). It is generated from the proto on demand
// (`npm run envoy:descriptor`, and by test/envoy-edge.test.ts) rather than committed, so it cannot
// fall behind the proto.
//
//	protoset -I DIR [-I DIR]... -o OUT FILE...
//
// FILE names are relative to an -I directory; google/protobuf/*.proto come with the compiler.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

type importPaths []string

func (p *importPaths) String() string     { return strings.Join(*p, ",") }
func (p *importPaths) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	var includes importPaths
	flag.Var(&includes, "I", "import directory (repeatable)")
	out := flag.String("o", "", "output file (binary FileDescriptorSet)")
	flag.Parse()
	if *out == "" || flag.NArg() == 0 || len(includes) == 0 {
		fmt.Fprintln(os.Stderr, "usage: protoset -I DIR [-I DIR]... -o OUT FILE...")
		os.Exit(2)
	}
	if err := run(includes, *out, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(includes []string, out string, files []string) error {
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{ImportPaths: includes}),
	}
	compiled, err := compiler.Compile(context.Background(), files...)
	if err != nil {
		return err
	}
	// Dependencies before dependents, each file once: the order protoc writes and Envoy's
	// descriptor pool builds in.
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	for _, fd := range compiled {
		add(fd)
	}
	bytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(set)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	// Written whole, then renamed: a reader (Envoy starting) never sees half a file.
	tmp := fmt.Sprintf("%s.tmp-%d", out, os.Getpid())
	if err := os.WriteFile(tmp, bytes, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
