//! One module per subcommand.
pub mod agent;
pub mod ca;
pub mod demo;
pub mod device;
pub mod events;
pub mod fleet;
pub mod hash_password;
pub mod isolation;
pub mod policy;
pub mod server;
pub mod state;
pub mod token;
pub mod trust;
pub mod trust_stores;
pub mod user;
