// Shared by ../1.36 and ../1.37 through a replace directive; the k8s.io versions
// come from whichever of them builds it.
module phalanx.dev/hack/difftest/runner

go 1.26.0
