//! The macos-auth v1 deterministic vector, reproduced byte for byte.

use nod_proto::{
    Decision, KeyId, PinnedKey, ProtoError, RequestBody, ResponseBody, SignedRequest,
    SignedResponse, SigningKey, VerifyingKey, frame,
};
use serde_json::Value;

const VECTOR: &str = include_str!("vectors/macos-auth-v1/approval.json");

struct Vector {
    json: Value,
    host: SigningKey,
    agent: SigningKey,
}

fn seed(v: &Value, field: &str) -> [u8; 32] {
    let mut out = [0; 32];
    hex::decode_to_slice(v[field].as_str().unwrap(), &mut out).unwrap();
    out
}

fn vector() -> Vector {
    let json: Value = serde_json::from_str(VECTOR).unwrap();
    Vector {
        host: SigningKey::from_bytes(&seed(&json, "host_private_key_hex")),
        agent: SigningKey::from_bytes(&seed(&json, "agent_private_key_hex")),
        json,
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

// Mid-way through the vector's lifetimes, so freshness passes.
const NOW: u64 = 1_700_000_002_000;

fn request(v: &Vector) -> SignedRequest {
    SignedRequest::from_json(&bytes(&v.json["request"])).unwrap()
}

fn response(v: &Vector) -> SignedResponse {
    SignedResponse::from_json(&bytes(&v.json["response"])).unwrap()
}

fn pin(key: VerifyingKey, key_id: Option<&str>) -> PinnedKey {
    PinnedKey {
        key,
        key_id: key_id.map(|id| KeyId::new(id).unwrap()),
    }
}

fn pinned_agent(v: &Vector) -> Vec<PinnedKey> {
    vec![pin(v.agent.verifying_key(), Some("agent-key-1"))]
}

fn pinned_host(v: &Vector) -> PinnedKey {
    pin(v.host.verifying_key(), Some("host-key-1"))
}

/// A public key file as macos-auth's `gen-key --public-key-file` writes it: one line.
fn macos_auth_pub_file(v: &Vector, field: &str) -> String {
    format!("public_key_hex={}\n", v.json[field].as_str().unwrap())
}

#[test]
fn public_keys_match_the_seeds() {
    let v = vector();
    assert_eq!(
        hex::encode(v.host.verifying_key().as_bytes()),
        v.json["host_public_key_hex"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(v.agent.verifying_key().as_bytes()),
        v.json["agent_public_key_hex"].as_str().unwrap()
    );
}

#[test]
fn request_hash_matches() {
    let v = vector();
    let req = request(&v);
    assert_eq!(
        hex::encode(req.body.hash()),
        v.json["request_hash_hex"].as_str().unwrap()
    );
}

#[test]
fn request_signature_is_reproduced() {
    let v = vector();
    let req = request(&v);
    let resigned = req.body.clone().sign(&v.host);
    assert_eq!(resigned.signature, req.signature);
}

#[test]
fn response_signature_is_reproduced() {
    let v = vector();
    let resp = response(&v);
    let resigned = resp.body.clone().sign(&v.agent);
    assert_eq!(resigned.signature, resp.signature);
}

#[test]
fn json_round_trips_to_the_same_value() {
    let v = vector();
    let req: Value = serde_json::from_slice(&request(&v).to_json()).unwrap();
    let resp: Value = serde_json::from_slice(&response(&v).to_json()).unwrap();
    assert_eq!(req, v.json["request"]);
    assert_eq!(resp, v.json["response"]);
}

#[test]
fn decodes_every_field_of_the_request() {
    let v = vector();
    let body: RequestBody = request(&v).body;
    assert_eq!(body.protocol_version, 1);
    assert_eq!(body.request_id, "req-test-vector-v1");
    assert_eq!(body.nonce, [66; 32]);
    assert_eq!(body.created_at_ms, 1_700_000_000_000);
    assert_eq!(body.expires_at_ms, 1_700_000_030_000);
    assert_eq!(body.linux_host_id, "host-abc");
    assert_eq!(body.linux_hostname, "linux.example.com");
    assert_eq!(body.pam_service, "sudo");
    assert_eq!(body.pam_user, "alice");
    assert_eq!(body.pam_ruser.as_deref(), Some("alice"));
    assert_eq!(body.pam_rhost, None);
    assert_eq!(body.pam_tty.as_deref(), Some("pts/3"));
    assert_eq!(body.sudo_command.as_deref(), Some("/usr/bin/id"));
    assert_eq!(body.client_pid, Some(12345));
    assert_eq!(body.key_id, "host-key-1");
}

#[test]
fn decodes_every_field_of_the_response() {
    let v = vector();
    let body: ResponseBody = response(&v).body;
    assert_eq!(body.decision, Decision::Approved);
    assert_eq!(body.auth_method, nod_proto::AuthMethod::BiometricOrWatch);
    assert_eq!(body.request_hash, request(&v).body.hash());
    assert_eq!(body.created_at_ms, 1_700_000_001_000);
    assert_eq!(body.expires_at_ms, 1_700_000_011_000);
    assert_eq!(body.agent_key_id, "agent-key-1");
    assert_eq!(body.error_code, None);
    assert_eq!(body.error_message, None);
}

#[test]
fn agent_side_verification_accepts_the_vector_request() {
    let v = vector();
    let verified = request(&v).verify(&pinned_host(&v), NOW, 30_000).unwrap();
    assert_eq!(
        hex::encode(verified.hash()),
        v.json["request_hash_hex"].as_str().unwrap()
    );
}

#[test]
fn helper_side_verification_accepts_the_vector_response() {
    let v = vector();
    let req = request(&v).body;
    let verified = response(&v)
        .verify(&pinned_agent(&v), &req, NOW, 30_000)
        .unwrap();
    assert_eq!(verified.decision(), Decision::Approved);
}

#[test]
fn answering_the_vector_request_reproduces_the_vector_response() {
    let v = vector();
    let verified = request(&v).verify(&pinned_host(&v), NOW, 30_000).unwrap();
    let body = ResponseBody::answering(
        &verified,
        Decision::Approved,
        nod_proto::AuthMethod::BiometricOrWatch,
        "agent-key-1",
        1_700_000_001_000,
    );
    assert_eq!(body.sign(&v.agent), response(&v));
}

#[test]
fn rejects_each_tampered_response_field() {
    let v = vector();
    let req = request(&v).body;
    type Tamper = Box<dyn Fn(&mut ResponseBody)>;
    let tamperings: Vec<(&str, Tamper)> = vec![
        ("request_id", Box::new(|b| b.request_id.push('x'))),
        ("nonce", Box::new(|b| b.nonce[0] ^= 1)),
        ("request_hash", Box::new(|b| b.request_hash[31] ^= 1)),
        ("linux_host_id", Box::new(|b| b.linux_host_id.push('x'))),
        ("pam_service", Box::new(|b| b.pam_service = "su".into())),
        ("pam_user", Box::new(|b| b.pam_user = "root".into())),
        ("decision", Box::new(|b| b.decision = Decision::Denied)),
        (
            "auth_method",
            Box::new(|b| b.auth_method = nod_proto::AuthMethod::Unknown),
        ),
        ("created_at_ms", Box::new(|b| b.created_at_ms += 1)),
        ("expires_at_ms", Box::new(|b| b.expires_at_ms += 1)),
        ("agent_key_id", Box::new(|b| b.agent_key_id.push('x'))),
        ("error_code", Box::new(|b| b.error_code = Some("x".into()))),
        (
            "error_message",
            Box::new(|b| b.error_message = Some("x".into())),
        ),
    ];
    for (field, tamper) in tamperings {
        let mut resp = response(&v);
        tamper(&mut resp.body);
        let err = resp
            .verify(&pinned_agent(&v), &req, NOW, 30_000)
            .unwrap_err();
        assert_eq!(err, ProtoError::BadSignature, "tampered {field}");
        assert!(err.is_auth_failure());
    }
}

#[test]
fn rejects_response_signed_by_another_key() {
    let v = vector();
    let req = request(&v).body;
    let forged = response(&v).body.sign(&SigningKey::from_bytes(&[1; 32]));
    assert_eq!(
        forged.verify(&pinned_agent(&v), &req, NOW, 30_000),
        Err(ProtoError::BadSignature)
    );
}

#[test]
fn rejects_response_with_wrong_key_id() {
    let v = vector();
    let req = request(&v).body;
    let pinned = vec![pin(v.agent.verifying_key(), Some("other-id"))];
    assert!(matches!(
        response(&v).verify(&pinned, &req, NOW, 30_000),
        Err(ProtoError::WrongKeyId { .. })
    ));
}

#[test]
fn rejects_response_bound_to_another_request() {
    let v = vector();
    let mut other = request(&v).body;
    other.nonce = [1; 32];
    assert_eq!(
        response(&v).verify(&pinned_agent(&v), &other, NOW, 30_000),
        Err(ProtoError::Mismatch("nonce"))
    );
}

#[test]
fn rejects_expired_and_future_responses() {
    let v = vector();
    let req = request(&v).body;
    assert!(matches!(
        response(&v).verify(&pinned_agent(&v), &req, 1_700_000_011_001, 30_000),
        Err(ProtoError::Expired { .. })
    ));
    assert!(matches!(
        response(&v).verify(&pinned_agent(&v), &req, 1_700_000_001_000 - 30_001, 30_000),
        Err(ProtoError::FromFuture { .. })
    ));
}

#[test]
fn rejects_request_with_bad_signature_or_key_id_or_age() {
    let v = vector();
    let host = pinned_host(&v);
    let mut tampered = request(&v);
    tampered.body.pam_user = "root".into();
    assert_eq!(
        tampered.verify(&host, NOW, 30_000).unwrap_err(),
        ProtoError::BadSignature
    );
    let other_id = pin(v.host.verifying_key(), Some("other"));
    assert!(matches!(
        request(&v).verify(&other_id, NOW, 30_000),
        Err(ProtoError::WrongKeyId { .. })
    ));
    assert!(matches!(
        request(&v).verify(&host, 1_700_000_030_001, 30_000),
        Err(ProtoError::Expired { .. })
    ));
}

#[test]
fn rejects_unknown_fields_and_wrong_shapes() {
    let v = vector();
    let mut extra = v.json["request"].clone();
    extra["body"]["surprise"] = Value::Bool(true);
    assert!(matches!(
        SignedRequest::from_json(&bytes(&extra)),
        Err(ProtoError::Json(_))
    ));

    let mut short_nonce = v.json["request"].clone();
    short_nonce["body"]["nonce"] = serde_json::json!([1, 2, 3]);
    assert!(SignedRequest::from_json(&bytes(&short_nonce)).is_err());

    let mut long_sig = v.json["response"].clone();
    long_sig["signature"].as_array_mut().unwrap().push(0.into());
    assert!(SignedResponse::from_json(&bytes(&long_sig)).is_err());

    let mut v2 = v.json["request"].clone();
    v2["body"]["protocol_version"] = 2.into();
    assert_eq!(
        SignedRequest::from_json(&bytes(&v2)),
        Err(ProtoError::UnsupportedVersion(2))
    );

    let mut empty_life = v.json["response"].clone();
    empty_life["body"]["expires_at_ms"] = empty_life["body"]["created_at_ms"].clone();
    assert!(SignedResponse::from_json(&bytes(&empty_life)).is_err());

    let mut bad_alg = v.json["request"].clone();
    bad_alg["body"]["alg"] = "Ed25519".into();
    assert!(SignedRequest::from_json(&bytes(&bad_alg)).is_err());
}

#[test]
fn frames_the_vector_messages() {
    let v = vector();
    let payload = request(&v).to_json();
    let framed = frame::encode(&payload).unwrap();
    let back = frame::read_frame(&mut &framed[..]).unwrap();
    assert_eq!(SignedRequest::from_json(&back).unwrap(), request(&v));
}

#[test]
fn key_files_in_both_formats_pin_the_vector_keys() {
    let v = vector();
    let hex_file = format!(
        "# agent\npublic_key_hex={}\nkey_id=agent-key-1\n",
        v.json["agent_public_key_hex"].as_str().unwrap()
    );
    let PinnedKey { key, key_id } = nod_proto::parse_public_key_file(&hex_file).unwrap();
    assert_eq!(key, v.agent.verifying_key());
    assert_eq!(key_id, Some(KeyId::new("agent-key-1").unwrap()));
    let private = format!(
        "private_key_hex={}\n",
        v.json["host_private_key_hex"].as_str().unwrap()
    );
    assert_eq!(
        nod_proto::parse_private_key_file(&private)
            .unwrap()
            .verifying_key(),
        v.host.verifying_key()
    );
}

// macos-auth's defaults: its key files carry no key id, its helper claims `host-key-1` and its
// agent `agent-key-1`. A key pinned from such a file admits whatever id its signer claims.

#[test]
fn host_pinned_from_a_macos_auth_key_file_accepts_host_key_1() {
    let v = vector();
    let host =
        nod_proto::parse_public_key_file(&macos_auth_pub_file(&v, "host_public_key_hex")).unwrap();
    assert_eq!(host.key_id, None);
    assert_eq!(request(&v).body.key_id, "host-key-1");
    let verified = request(&v).verify(&host, NOW, 30_000).unwrap();
    assert_eq!(
        hex::encode(verified.hash()),
        v.json["request_hash_hex"].as_str().unwrap()
    );
}

#[test]
fn agent_pinned_from_a_macos_auth_key_file_accepts_agent_key_1() {
    let v = vector();
    let agent =
        nod_proto::parse_public_key_file(&macos_auth_pub_file(&v, "agent_public_key_hex")).unwrap();
    assert_eq!(agent.key_id, None);
    let verified = response(&v)
        .verify(&[agent], &request(&v).body, NOW, 30_000)
        .unwrap();
    assert_eq!(verified.body().agent_key_id, "agent-key-1");
    assert_eq!(verified.decision(), Decision::Approved);
}

#[test]
fn a_pin_without_key_id_still_needs_the_signature() {
    let v = vector();
    let unpinned_host = pin(v.host.verifying_key(), None);
    let mut tampered = request(&v);
    tampered.body.key_id = "host-key-2".into();
    assert_eq!(
        tampered.verify(&unpinned_host, NOW, 30_000).unwrap_err(),
        ProtoError::BadSignature
    );
    let forged = request(&v).body.sign(&SigningKey::from_bytes(&[1; 32]));
    assert_eq!(
        forged.verify(&unpinned_host, NOW, 30_000).unwrap_err(),
        ProtoError::BadSignature
    );
    let mut tampered = response(&v);
    tampered.body.agent_key_id = "agent-key-2".into();
    assert_eq!(
        tampered.verify(
            &[pin(v.agent.verifying_key(), None)],
            &request(&v).body,
            NOW,
            30_000
        ),
        Err(ProtoError::BadSignature)
    );
}

/// Several pinned agent keys, as an agents.d/ with many files: a key pinned with an id is a
/// candidate only for that id, a key pinned without one for any id; the signature decides.
#[test]
fn several_pinned_agent_keys_the_signature_picks_the_key() {
    let v = vector();
    let req = request(&v).body;
    let agent = v.agent.verifying_key();
    let other = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let third = SigningKey::from_bytes(&[2; 32]).verifying_key();
    let verify = |pinned: Vec<PinnedKey>| response(&v).verify(&pinned, &req, NOW, 30_000);

    // Another key pinned under the claimed id does not get in the way of the signer's own pin.
    assert!(verify(vec![pin(other, Some("agent-key-1")), pin(agent, None)]).is_ok());
    assert!(verify(vec![pin(other, None), pin(third, None), pin(agent, None)]).is_ok());
    assert!(verify(vec![pin(other, None), pin(agent, Some("agent-key-1"))]).is_ok());
    // The same key pinned twice: once under another id, once without an id.
    assert!(verify(vec![pin(agent, Some("laptop")), pin(agent, None)]).is_ok());

    // The signer's key is pinned only under another id: that id is what it must claim.
    assert_eq!(
        verify(vec![pin(other, None), pin(agent, Some("laptop"))]).unwrap_err(),
        ProtoError::WrongKeyId {
            expected: "laptop".into(),
            got: "agent-key-1".into()
        }
    );
    // The signer's key is not pinned at all, whatever ids the pinned keys have.
    for pinned in [
        vec![],
        vec![pin(other, None)],
        vec![pin(other, Some("agent-key-1")), pin(third, None)],
    ] {
        assert_eq!(verify(pinned).unwrap_err(), ProtoError::BadSignature);
    }
}

#[test]
fn every_prefix_of_the_vector_response_could_still_be_a_response() {
    let v = vector();
    let json = response(&v).to_json();
    for end in 0..=json.len() {
        assert_eq!(
            SignedResponse::check_prefix(&json[..end]),
            Ok(()),
            "{:?}",
            String::from_utf8_lossy(&json[..end])
        );
    }
}

#[test]
fn a_prefix_that_is_already_wrong_is_refused() {
    let v = vector();
    let json = String::from_utf8(response(&v).to_json()).unwrap();
    for bad in [
        "x".to_owned(),
        "{\"hello\"".to_owned(),
        "{\"body\":{\"protocol_version\":\"1\"".to_owned(),
        "{\"body\":{\"protocol_version\":1,\"request_id\":\"r\",\"nonce\":[1,2,3]".to_owned(),
        "{\"body\":{\"protocol_version\":70000".to_owned() + ",",
        json.replace("\"approved\"", "\"maybe\""),
        json.clone() + "x",
    ] {
        assert!(
            matches!(
                SignedResponse::check_prefix(bad.as_bytes()),
                Err(ProtoError::Json(_))
            ),
            "{bad}"
        );
    }
    let mut v2 = v.json["response"].clone();
    v2["body"]["protocol_version"] = 2.into();
    assert_eq!(
        SignedResponse::check_prefix(&bytes(&v2)),
        Err(ProtoError::UnsupportedVersion(2))
    );
}
