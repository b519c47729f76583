//! Canonical S-expressions (csexp), the encoding of Dune's rule metadata.
