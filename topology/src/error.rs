//! Errors of the topology model.

/// What went wrong building or querying the topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// The configuration has no levels.
    #[error("topology configuration has no levels; list at least the node level (kubernetes.io/hostname)")]
    NoLevels,
    /// Two levels share a name.
    #[error("topology level {0:?} is listed twice; give every level a distinct name")]
    DuplicateLevel(String),
    /// A node-scope level follows a device-scope level.
    #[error(
        "topology level {0:?} is read from a node label but comes after a device-attribute level; \
         list node-label levels (zone, rack, node…) before device levels (numa, pcie)"
    )]
    LevelOrder(String),
    /// No node-scope level at all.
    #[error(
        "topology configuration has no node-label level; the last node-label level names the node (e.g. kubernetes.io/hostname)"
    )]
    NoNodeLevel,
    /// A level name or key that the configuration does not know.
    #[error("unknown topology level {name:?}; known levels: {known}")]
    UnknownLevel {
        /// What was asked for.
        name: String,
        /// The configured levels, comma-separated.
        known: String,
    },
}
