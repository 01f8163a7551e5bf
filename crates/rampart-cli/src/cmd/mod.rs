//! One module per subcommand.
pub mod hash_password;
pub mod server;
