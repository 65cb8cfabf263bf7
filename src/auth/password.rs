//! Password hashing with Argon2id (PHC strings with their own salt and parameters).

use std::cell::RefCell;

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::AppError;

thread_local! {
    /// The ~19 MiB each hash works in, allocated once per hashing thread and reused:
    /// a fresh allocation per hash is not given back by the allocator (it kept ~19 MiB
    /// more per registration, up to hundreds of megabytes).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` with `salt`, `len` bytes, in this thread's reused memory.
fn digest(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: Salt<'_>,
    len: usize,
) -> Result<Output, password_hash::Error> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    Output::init_with(len, |out| {
        MEMORY.with_borrow_mut(|blocks| {
            let n = argon.params().block_count();
            if blocks.len() < n {
                blocks.resize(n, Block::default());
            }
            argon
                .hash_password_into_with_memory(password, salt, out, &mut blocks[..n])
                .map_err(|_| password_hash::Error::Crypto)
        })
    })
}

/// An Argon2id PHC string (default parameters, a fresh salt) for `password`.
pub fn hash(password: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let output = digest(
        &argon,
        password.as_bytes(),
        salt.as_salt(),
        Params::DEFAULT_OUTPUT_LEN,
    )
    .map_err(AppError::internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(AppError::internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// True when `password` matches the stored PHC string (any Argon2 variant, version and
/// parameters it names). A malformed hash never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(stored) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (stored.hash, stored.salt) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(stored.algorithm),
        Params::try_from(&stored),
    ) else {
        return false;
    };
    let version = match stored.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let argon = Argon2::new(algorithm, version, params);
    // `Output`'s equality is constant-time.
    digest(&argon, password.as_bytes(), salt, expected.len())
        .is_ok_and(|computed| computed == expected)
}

/// A hash of a password nobody knows, verified when a login names no existing user so
/// a wrong username costs the same time as a wrong password.
/// Made once, on the hashing threads like every hash.
pub async fn dummy_hash() -> &'static str {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            hash_blocking(uuid::Uuid::new_v4().to_string())
                .await
                .unwrap_or_default()
        })
        .await
}

/// Hashing is deliberately slow (tens of milliseconds) and takes ~19 MiB of memory
/// while it runs, so it runs on a few threads of its own, one per core, never on the
/// async workers. More at once would not finish sooner; and memory the allocator gave a
/// hash stays with that thread's arena after it, so a burst of logins (a promotion, a
/// load test) on ever new blocking threads would leave the process a gigabyte larger.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    type Job = Box<dyn FnOnce() + Send>;
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        tx
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    queue.send(job).ok()?;
    result.await.ok()
}

pub async fn hash_blocking(password: String) -> Result<String, AppError> {
    blocking(move || hash(&password))
        .await
        .ok_or_else(|| AppError::internal("password hashing was cancelled"))?
}

pub async fn verify_blocking(password: String, phc: String) -> bool {
    blocking(move || verify(&password, &phc))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let h = hash("秘密 password").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("秘密 password", &h));
        assert!(!verify("秘密 passwore", &h));
        assert!(!verify("x", "not a hash"));
        assert_ne!(hash("same").unwrap(), hash("same").unwrap(), "salts differ");
    }

    #[test]
    fn agrees_with_the_library_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Ours verifies by the library…
        let ours = hash("pw 口令").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password("pw 口令".as_bytes(), &parsed)
                .is_ok()
        );
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_err());
        // …and the library's (also with other parameters and variants) by ours.
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 3, 1, Some(24)).unwrap(),
        );
        for argon in [Argon2::default(), other] {
            let theirs = argon.hash_password(b"secret", &salt).unwrap().to_string();
            assert!(verify("secret", &theirs), "{theirs}");
            assert!(!verify("secreT", &theirs), "{theirs}");
        }
    }
}
