//! Certificates for TLS tests: a CA of the test's own and a server
//! certificate it signed for `localhost` and `127.0.0.1`, made with rcgen,
//! written to a temporary directory removed on drop.
//!
//! Servers get [`TestCertificates::server_cert`] and
//! [`TestCertificates::server_key`]; clients trust
//! [`TestCertificates::ca_file`] (and nothing else, so a connection that
//! succeeds proves the certificate was checked against it).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and a server certificate, as PEM files.
#[derive(Debug)]
pub struct TestCertificates {
    dir: PathBuf,
    /// The server certificate, PEM.
    pub server_cert_pem: String,
    /// Its private key, PEM.
    pub server_key_pem: String,
}

impl TestCertificates {
    /// Makes a CA and a server certificate for `localhost` and `127.0.0.1`.
    ///
    /// # Panics
    /// When rcgen or the file system fails.
    pub fn new() -> TestCertificates {
        let suffix = rand_suffix();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a client trusting another test's CA must find
        // no issuer at all, not one of the same name with another key.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("election test CA {suffix:x}"));
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let dir =
            std::env::temp_dir().join(format!("election-tls-{}-{:x}", std::process::id(), suffix));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let certificates = TestCertificates {
            dir,
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        };
        std::fs::write(certificates.ca_file(), ca_cert.pem()).expect("write ca.pem");
        std::fs::write(certificates.server_cert(), &certificates.server_cert_pem)
            .expect("write server.pem");
        std::fs::write(certificates.server_key(), &certificates.server_key_pem)
            .expect("write server.key");
        certificates
    }

    /// The CA certificate (PEM) clients should trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for TestCertificates {
    fn default() -> Self {
        TestCertificates::new()
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A suffix unlikely to collide between tests of one process.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    nanos ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 32)
}
