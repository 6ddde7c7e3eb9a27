// Command dra-upstream-1.37 runs the DRA structured allocator of Kubernetes 1.37
// (k8s.io/dynamic-resource-allocation v0.37.2) over difftest scenarios; see
// package runner.
package main

import (
	"k8s.io/dynamic-resource-allocation/structured"

	"phalanx.dev/hack/difftest/runner"
)

func main() {
	runner.Main(runner.Release{Name: "1.37", AllocatorFeatures: allocatorFeatures})
}

// allocatorFeatures leaves the alpha gates that only upstream's experimental
// allocator implements (DRADeviceCompatibilityGroups, DRADerivedAttributes,
// DRAOptionalNodeOperations) off, as 1.37 does by default: Phalanx does not implement
// them either.
func allocatorFeatures(f runner.Features) (structured.Features, error) {
	return structured.Features{
		AdminAccess:             f.AdminAccess,
		ConsumableCapacity:      f.ConsumableCapacity,
		DeviceBindingAndStatus:  f.DeviceBindingAndStatus,
		DeviceTaints:            f.DeviceTaints,
		FractionalCapacityRange: f.FractionalCapacityRange,
		ListTypeAttributes:      f.ListTypeAttributes,
		PartitionableDevices:    f.PartitionableDevices,
		PrioritizedList:         f.PrioritizedList,
	}, nil
}
