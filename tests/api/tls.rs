//! TLS and mutual TLS, with certificates the test makes itself.

use std::path::{Path, PathBuf};

use customers::api::pb::ListCustomersRequest;
use customers::config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{RunningServer, client_with_key, fresh_database, issue_key};

/// A certificate authority of the test's own.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and key (PEM) issued by `ca`, for a server or a client.
fn issue(ca: &CertifiedIssuer<'static, KeyPair>, name: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

struct TlsServer {
    server: RunningServer,
    key: String,
    _dir: tempfile::TempDir,
}

async fn spawn(ca: &CertifiedIssuer<'static, KeyPair>, client_ca: Option<&str>) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue(ca, "localhost", false);
    let url = fresh_database().await;
    let mut config = Config::for_database(&url, "127.0.0.1:0".parse().unwrap());
    config.tls_cert = Some(write(dir.path(), "server.pem", &cert));
    config.tls_key = Some(write(dir.path(), "server.key", &key));
    config.tls_client_ca = client_ca.map(|pem| write(dir.path(), "clients.pem", pem));
    let server = RunningServer::start(&config).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let api_key = issue_key(&db, "acct_default", false).await;
    TlsServer {
        server,
        key: api_key,
        _dir: dir,
    }
}

/// A TLS connection trusting `ca`, presenting `identity` if given.
async fn connect(
    server: &TlsServer,
    ca: &CertifiedIssuer<'static, KeyPair>,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", server.server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn can_list(server: &TlsServer, channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    client_with_key(channel, &server.key)
        .list_customers(ListCustomersRequest::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_client_that_trusts_the_authority_talks_tls_and_plaintext_is_refused() {
    let ca = authority("Test server CA");
    let mut server = spawn(&ca, None).await;

    let tls = connect(&server, &ca, None).await;
    let plaintext = Channel::from_shared(format!("http://{}", server.server.addr))
        .unwrap()
        .connect()
        .await;
    let untrusting = connect(&server, &authority("Some other CA"), None).await;

    assert!(can_list(&server, tls).await);
    assert!(!can_list(&server, plaintext).await);
    assert!(!can_list(&server, untrusting).await);
    server.server.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_accepts_only_clients_with_a_certificate_from_the_configured_authority() {
    let server_ca = authority("Test server CA");
    let client_ca = authority("Test client CA");
    let stranger_ca = authority("Unknown client CA");
    let mut server = spawn(&server_ca, Some(&client_ca.pem())).await;

    let known = connect(
        &server,
        &server_ca,
        Some(issue(&client_ca, "billing", true)),
    )
    .await;
    let anonymous = connect(&server, &server_ca, None).await;
    let stranger = connect(
        &server,
        &server_ca,
        Some(issue(&stranger_ca, "billing", true)),
    )
    .await;

    assert!(can_list(&server, known).await);
    assert!(!can_list(&server, anonymous).await);
    assert!(!can_list(&server, stranger).await);
    server.server.stop().await.unwrap();
}
