//! pam_nod.so
