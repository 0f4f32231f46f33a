//! `kiln step clone`: fetch exactly one commit, shallow, with gix.
