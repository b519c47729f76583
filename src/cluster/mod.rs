//! The cluster of cache boxes: which box owns which key.
