// Package runner runs the upstream DRA structured allocator
// (k8s.io/dynamic-resource-allocation) over scenarios read as JSON lines on stdin and
// prints one JSON line per scenario on stdout, so that Phalanx's allocator can be
// compared with it.
//
// It is shared by one small command per Kubernetes release (../1.36, ../1.37). Each
// is its own Go module, pinning that release's k8s.io modules and pulling this one in
// with a `replace` directive: Go cannot build one module against two versions of a
// dependency, and structured.Features has different fields in each release, so the
// commands hold only the mapping of feature flags and this package holds the rest.
//
// Input line:  {"id", "features", "classes", "slices", "claims", "allocated", "node"}
// Output line: {"id", "allocator", "results" | null, "error" | ""}
package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/utils/ptr"
)

// Features are the feature flags of a scenario, as Phalanx's dra::Features serializes
// them: every flag any supported release knows, and the release they are meant for.
type Features struct {
	Release                 string `json:"release"`
	AdminAccess             bool   `json:"adminAccess"`
	ConsumableCapacity      bool   `json:"consumableCapacity"`
	DeviceBindingAndStatus  bool   `json:"deviceBindingAndStatus"`
	DeviceTaints            bool   `json:"deviceTaints"`
	FractionalCapacityRange bool   `json:"fractionalCapacityRange"`
	ListTypeAttributes      bool   `json:"listTypeAttributes"`
	PartitionableDevices    bool   `json:"partitionableDevices"`
	PrioritizedList         bool   `json:"prioritizedList"`
}

// Release is what differs between the per-release commands.
type Release struct {
	// Name is the Kubernetes minor release, as in Features.Release: "1.37".
	Name string
	// AllocatorFeatures maps a scenario's flags onto that release's
	// structured.Features; an error for a flag the release does not have.
	AllocatorFeatures func(Features) (structured.Features, error)
}

type scenario struct {
	ID        string                      `json:"id"`
	Features  Features                    `json:"features"`
	Classes   []resourceapi.DeviceClass   `json:"classes"`
	Slices    []resourceapi.ResourceSlice `json:"slices"`
	Claims    []resourceapi.ResourceClaim `json:"claims"`
	Allocated []resourceapi.ResourceClaim `json:"allocated"`
	Node      v1.Node                     `json:"node"`
}

type outcome struct {
	ID        string                         `json:"id"`
	Allocator string                         `json:"allocator"`
	Results   []resourceapi.AllocationResult `json:"results"`
	Error     string                         `json:"error"`
}

type classLister map[string]*resourceapi.DeviceClass

func (l classLister) List() ([]*resourceapi.DeviceClass, error) {
	var out []*resourceapi.DeviceClass
	for _, c := range l {
		out = append(out, c)
	}
	return out, nil
}

func (l classLister) Get(name string) (*resourceapi.DeviceClass, error) {
	if c, ok := l[name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("deviceclass %q not found", name)
}

// allocatedState mirrors kube-scheduler's foreachAllocatedDevice: adminAccess results
// are not counted, results with a shareID count as shares with their capacity.
func allocatedState(claims []resourceapi.ResourceClaim, consumable bool) structured.AllocatedState {
	s := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	for _, c := range claims {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if ptr.Deref(r.AdminAccess, false) {
				continue
			}
			id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
			if consumable && r.ShareID != nil {
				s.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
				if r.ConsumedCapacity != nil {
					s.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
				}
				continue
			}
			s.AllocatedDevices.Insert(id)
		}
	}
	return s
}

func run(rel Release, sc *scenario) (out outcome) {
	out.ID = sc.ID
	defer func() {
		if r := recover(); r != nil {
			out.Results = nil
			out.Error = fmt.Sprintf("panic: %v", r)
		}
	}()
	// A scenario generated for another release would compare the wrong semantics.
	if sc.Features.Release != rel.Name {
		out.Error = fmt.Sprintf("runner: scenario is for Kubernetes %q, this runner is %s", sc.Features.Release, rel.Name)
		return out
	}
	f, err := rel.AllocatorFeatures(sc.Features)
	if err != nil {
		out.Error = "runner: " + err.Error()
		return out
	}
	lister := classLister{}
	for i := range sc.Classes {
		lister[sc.Classes[i].Name] = &sc.Classes[i]
	}
	slices := make([]*resourceapi.ResourceSlice, len(sc.Slices))
	for i := range sc.Slices {
		slices[i] = &sc.Slices[i]
	}
	claims := make([]*resourceapi.ResourceClaim, len(sc.Claims))
	for i := range sc.Claims {
		claims[i] = &sc.Claims[i]
	}
	cache := cel.NewCache(10, cel.Features{
		EnableConsumableCapacity: f.ConsumableCapacity,
		EnableListTypeAttributes: f.ListTypeAttributes,
	})
	// Like kube-scheduler's DRA filter timeout: some scenarios make the exhaustive
	// search explode; those are reported as timeouts and not compared.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	alloc, err := structured.NewAllocator(ctx, f, allocatedState(sc.Allocated, f.ConsumableCapacity), lister, slices, cache)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	switch fmt.Sprintf("%T", alloc) {
	case "*stable.Allocator":
		out.Allocator = "stable"
	case "*incubating.Allocator":
		out.Allocator = "incubating"
	default:
		out.Allocator = "experimental"
	}
	results, err := alloc.Allocate(ctx, &sc.Node, claims)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Results = results
	return out
}

// Main answers every scenario on stdin with the allocator of release rel.
func Main(rel Release) {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<30)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	for in.Scan() {
		var sc scenario
		if err := json.Unmarshal(in.Bytes(), &sc); err != nil {
			_ = enc.Encode(outcome{Error: "decode: " + err.Error()})
			continue
		}
		out := run(rel, &sc)
		if err := enc.Encode(out); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
