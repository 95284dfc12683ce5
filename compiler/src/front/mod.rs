//! The front end: `.cnn` text to a checked graph.
//!
//! [`source`] holds the files and spans, [`syntax`] parses text into the
//! AST (pest), [`check`] resolves names, values and blocks and builds the
//! graph IR, using [`shape`]'s output-size rules; every problem on the way is
//! a [`diag::Diagnostic`].

pub mod check;
pub mod diag;
pub mod shape;
pub mod source;
pub mod syntax;
