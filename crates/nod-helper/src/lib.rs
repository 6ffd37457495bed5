//! nod-helper library.
#![forbid(unsafe_code)]
