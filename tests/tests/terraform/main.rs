//! The Terraform tests: strait's Terraform modules and examples, checked offline, and its
//! provider driven by real Terraform against real gateways.

mod modules;
mod provider;
