#![no_std]
//! The restore plan.
