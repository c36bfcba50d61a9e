//! The engine's error boundary. Classification lives here: the farm retries
//! [`EngineError::Internal`] and [`EngineError::Unreachable`], and fails the job
//! at once on [`EngineError::BadInput`].

use proto::exit;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input (or what was asked of it) cannot be transcoded; retrying will not help.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A failure of this machine or of libav that another attempt may not hit.
    #[error("internal error: {context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source's store could not be read, after the reader waited out what it
    /// could: neither the source's fault nor this machine's.
    #[error("store unreachable: {context}: {source}")]
    Unreachable {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub fn bad(reason: impl Into<String>) -> Self {
        EngineError::BadInput(reason.into())
    }

    pub fn internal(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        EngineError::Internal { context: context.into(), source: source.into() }
    }

    pub fn unreachable(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        EngineError::Unreachable { context: context.into(), source: source.into() }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Internal { .. } | EngineError::Unreachable { .. })
    }

    /// The process exit code the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::BadInput(_) => exit::BAD_INPUT,
            EngineError::Internal { .. } if self.is_out_of_space() => exit::NO_SPACE,
            EngineError::Internal { .. } => exit::INTERNAL,
            EngineError::Unreachable { .. } => exit::UNREACHABLE,
        }
    }

    /// Whether a write failed on a full disk (or over quota), from libav or from std.
    pub fn is_out_of_space(&self) -> bool {
        let EngineError::Internal { source, .. } = self else { return false };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            let full = match (e.downcast_ref::<std::io::Error>(), e.downcast_ref::<ffmpeg_next::Error>()) {
                (Some(io), _) => proto::disk::is_out_of_space(io),
                (_, Some(ffmpeg_next::Error::Other { errno })) => proto::disk::is_out_of_space_errno(Some(*errno)),
                _ => false,
            };
            if full {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// Attaches context to libav and I/O errors, making them internal failures.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| EngineError::internal(context(), e))
    }
}
