//! Pure model of the cluster topology Phalanx places against: the level tree
//! zone ▸ block ▸ rack ▸ NVLink domain ▸ node ▸ NUMA ▸ PCIe root ▸ device.
