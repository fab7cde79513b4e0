//! One module per report: `probes` (the only part that touches the kernel), `aggregate`
//! (pure: kernel data to a snapshot) and `render` (pure: snapshot to text).

pub mod disktop;
pub mod nettop;
pub mod slowopen;
