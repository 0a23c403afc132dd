//! Independent checking of plans (filled in below).
