//! The embeddable nanoclaw supervisor tree.
//!
//! ```text
//! Supervisor (root)                         actors::supervisor
//! ├── Sweeper                               orphaned containers at start and every 5 min
//! ├── SessionSupervisor                     spawns on demand, resumes failed sessions with backoff
//! │   └── SessionActor(<session>)           inbound.db writer, delivery, tries, stuck/idle
//! │       └── ContainerActor(<container>)   create → start → wait → remove; exit = supervision event
//! ├── ApprovalSupervisor                    (approval actors arrive with approvals)
//! └── ChannelSupervisor                     restarts channels with backoff + jitter
//!     └── ChannelActor(<channel account>)   adapter → Router; deliveries and notices
//! ```
//!
//! Start it with [`Service::start`], giving a [`ports::runtime::ContainerRuntime`] and the
//! [`ports::channel::ChannelAdapter`]s; stop it with [`Service::shutdown`], which stops channels,
//! then sessions (each stopping its container), then the rest, under a deadline.
//!
//! Every supervisor paces restarts with one [`restart::RestartPolicy`].
//!
//! State lives in SQLite: the central [`store`] and each session's DBs
//! ([`session_files`], [`nanoclaw_protocol`]). Actors rebuild themselves from it, so a restart of
//! any actor — or of the host — loses nothing. Everything a container writes is read only through
//! [`container_files`], which checks types, schemas, sizes and time first.

pub mod actors;
pub mod approvals;
pub mod container_files;
pub mod context;
pub mod disk;
pub mod handles;
pub mod host_outbox;
pub mod ports;
pub mod restart;
pub mod router;
pub mod service;
pub mod session;
pub mod session_files;
pub mod slots;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use context::{ServiceConfig, ServiceContext};
pub use service::{Service, StartError};
