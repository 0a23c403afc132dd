//! The cloud's clock is the crate's ([`crate::clock`]): timestamps from an injected clock, waits on tokio time.
pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock, TokioClock};
