//! nod agent library.
#![forbid(unsafe_code)]
