//! Blocking work off the async workers: the store's transactions (redb,
//! fsync), the signer's calls (openssl, PKCS#11) and CPU-bound batches run
//! here, on tokio's blocking pool, so a use case is a plain `async fn` and
//! no request path holds a worker. The adapters call it; services do not.

use std::fmt;

/// A blocking task panicked or was cancelled before it answered.
#[derive(Debug)]
pub struct TaskFailed(String);

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a blocking task failed: {}", self.0)
    }
}

/// Runs `f` on the blocking pool and waits for its answer.
pub async fn run<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(answer) => answer,
        Err(e) => Err(TaskFailed(e.to_string()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Failure {
        Mine,
        Task(String),
    }

    impl From<TaskFailed> for Failure {
        fn from(e: TaskFailed) -> Self {
            Failure::Task(e.to_string())
        }
    }

    #[tokio::test]
    async fn answers_come_back_and_a_panic_is_an_error_not_a_crash() {
        let worker = std::thread::current().id();
        let ran_on = run(move || Ok::<_, Failure>(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, worker, "the work ran off the calling thread");
        assert!(matches!(run(|| Err::<(), _>(Failure::Mine)).await, Err(Failure::Mine)));
        let panicked = run(|| -> Result<(), Failure> { panic!("boom") }).await;
        assert!(matches!(&panicked, Err(Failure::Task(t)) if t.contains("a blocking task failed")), "{panicked:?}");
    }
}
