//! Dune's rule metadata entries (`meta/v4`, `meta/v5`).
