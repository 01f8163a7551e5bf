//! Rampart gateway (being written).
