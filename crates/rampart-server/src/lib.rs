//! Rampart server (being written).
