//! Money: prices and costs in integer micros. The only code that computes what an
//! answer costs.

pub mod pricing;
