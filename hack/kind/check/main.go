// Command check reads a kind cluster configuration into kind's own v1alpha4 types,
// strictly (an unknown or misspelt field is an error), and checks what hack/kind/up.sh
// relies on. It cannot create a cluster (that needs Docker); it proves the file is one
// kind accepts.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: check <kind-config.yaml>")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err.Error())
	}
	var cluster v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(data, &cluster); err != nil {
		fail(fmt.Sprintf("%s is not a kind v1alpha4 Cluster: %v", os.Args[1], err))
	}
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" {
		fail(fmt.Sprintf("kind %q apiVersion %q, want Cluster kind.x-k8s.io/v1alpha4", cluster.Kind, cluster.APIVersion))
	}
	v1alpha4.SetDefaultsCluster(&cluster)
	workers := 0
	for _, n := range cluster.Nodes {
		if n.Role == v1alpha4.WorkerRole && n.Labels["nvidia.com/gpu.present"] == "true" {
			workers++
		}
	}
	if workers == 0 {
		fail("no worker is labelled nvidia.com/gpu.present=true: the driver's DaemonSet would run nowhere")
	}
	fmt.Printf("ok: cluster %q, %d node(s), %d GPU worker(s), feature gates %v\n", cluster.Name, len(cluster.Nodes), workers, cluster.FeatureGates)
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}
