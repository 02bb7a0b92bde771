//! The ops, one file per family: forward, backward, and their tests.

pub(crate) mod broadcast;

pub mod activation;
pub mod attention;
pub mod binary;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub mod unary;
