// Command dra-upstream-1.36 runs the DRA structured allocator of Kubernetes 1.36
// (k8s.io/dynamic-resource-allocation v0.36.3) over difftest scenarios; see
// package runner.
package main

import (
	"errors"

	"k8s.io/dynamic-resource-allocation/structured"

	"phalanx.dev/hack/difftest/runner"
)

func main() {
	runner.Main(runner.Release{Name: "1.36", AllocatorFeatures: allocatorFeatures})
}

func allocatorFeatures(f runner.Features) (structured.Features, error) {
	if f.FractionalCapacityRange {
		return structured.Features{}, errors.New("Kubernetes 1.36 has no DRAFractionalCapacityRange feature")
	}
	return structured.Features{
		AdminAccess:            f.AdminAccess,
		ConsumableCapacity:     f.ConsumableCapacity,
		DeviceBindingAndStatus: f.DeviceBindingAndStatus,
		DeviceTaints:           f.DeviceTaints,
		ListTypeAttributes:     f.ListTypeAttributes,
		PartitionableDevices:   f.PartitionableDevices,
		PrioritizedList:        f.PrioritizedList,
	}, nil
}
