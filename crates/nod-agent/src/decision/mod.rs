//! The decision core shared by the three services.

pub mod rate;
