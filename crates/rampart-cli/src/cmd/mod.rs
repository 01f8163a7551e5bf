//! One module per subcommand.
pub mod hash_password;
pub mod policy;
pub mod server;
pub mod ca;
pub mod trust;
pub mod events;
pub mod agent;
pub mod device;
