//! Safe unpacking of untrusted archives into a work directory.
