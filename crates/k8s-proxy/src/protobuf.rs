//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): read as far as
//! the decision needs, forwarded byte-exact. Sans-IO and total: hostile bytes get an error,
//! never a panic.
//!
//! What it promises:
//! - The envelope (`k8s\0` magic, then a `runtime.Unknown` message) is read strictly: a body
//!   without the magic, an envelope that does not decode, an empty `apiVersion` or `kind` (the
//!   API server would fill them in from the URL, so the gateway could not know what it decodes
//!   to), a `contentEncoding` or a foreign `contentType` are errors.
//! - A kind that carries a pod template (`Pod`, `PodTemplate`, `ReplicationController`,
//!   `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`) is decoded whole
//!   with the API's own message types ([`k8s_pb`]) and checked for the same privileged settings
//!   as a JSON body ([`crate::request::privileged_spec`]). Protobuf merges repeated occurrences
//!   of a field the way the API server does (last scalar wins, messages merge), so a field sent
//!   twice decides like the server reads it. Such a kind in an API version the gateway does not
//!   know is an error, not a pass.
//! - Any other kind (ConfigMap, Secret, Service, Scale, …) carries no pod spec: its bytes are
//!   forwarded unchanged and never decoded.

use k8s_pb::api::core::v1::PodSpec;
use prost::Message;

/// The media type of Kubernetes protobuf bodies.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtobufError {
    /// The body does not start with the Kubernetes protobuf magic.
    #[error("not a Kubernetes protobuf body (no k8s\\0 prefix)")]
    NoMagic,
    /// The `runtime.Unknown` envelope is malformed or incomplete.
    #[error("protobuf envelope refused: {0}")]
    Envelope(String),
    /// The object inside could not be decoded as its kind.
    #[error("protobuf {kind} could not be decoded: {reason}")]
    Object {
        /// `apiVersion/kind` of the envelope.
        kind: String,
        /// The decoder's message.
        reason: String,
    },
    /// A kind that carries a pod template, in an API version the gateway cannot decode.
    #[error("protobuf {0} cannot be inspected (unknown API version of a kind with a pod spec)")]
    UnknownVersion(String),
    /// The envelope's kind is not what the request's resource holds.
    #[error("protobuf body of kind {found} sent to resource {resource}")]
    KindMismatch {
        /// `apiVersion/kind` of the envelope.
        found: String,
        /// The request's resource.
        resource: String,
    },
}

/// The `runtime.Unknown` envelope of a protobuf body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `apiVersion` (`v1`, `apps/v1`, …).
    pub api_version: String,
    /// `kind` (`ConfigMap`, `Pod`, …).
    pub kind: String,
    raw: Vec<u8>,
}

impl Envelope {
    /// `apiVersion/kind`.
    pub fn type_name(&self) -> String {
        format!("{}/{}", self.api_version, self.kind)
    }
}

/// Whether a `Content-Type` value is the Kubernetes protobuf media type (parameters ignored,
/// case-insensitive, as the API server's negotiation reads it).
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE)
}

/// Reads the envelope of a protobuf body.
pub fn read_envelope(body: &[u8]) -> Result<Envelope, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| ProtobufError::Envelope(e.to_string()))?;
    let type_meta = unknown
        .type_meta
        .ok_or_else(|| ProtobufError::Envelope("no typeMeta".into()))?;
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::Envelope(
            "typeMeta must name apiVersion and kind".into(),
        ));
    }
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(ProtobufError::Envelope(
            "contentEncoding is not empty".into(),
        ));
    }
    if let Some(ct) = unknown.content_type.as_deref()
        && !ct.is_empty()
        && !is_protobuf(ct)
    {
        return Err(ProtobufError::Envelope(format!("inner contentType {ct:?}")));
    }
    Ok(Envelope {
        api_version,
        kind,
        raw: unknown.raw.unwrap_or_default(),
    })
}

/// Kinds that carry a pod template, by name (any API version).
const POD_KINDS: &[&str] = &[
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];

/// Resources whose objects carry a pod template, with the kind each holds.
const POD_RESOURCES: &[(&str, &str)] = &[
    ("pods", "Pod"),
    ("podtemplates", "PodTemplate"),
    ("replicationcontrollers", "ReplicationController"),
    ("deployments", "Deployment"),
    ("replicasets", "ReplicaSet"),
    ("statefulsets", "StatefulSet"),
    ("daemonsets", "DaemonSet"),
    ("jobs", "Job"),
    ("cronjobs", "CronJob"),
];

/// Whether objects of `resource` carry a pod template (so their bodies must be read).
pub fn holds_pod_spec(resource: &str) -> bool {
    POD_RESOURCES.iter().any(|(r, _)| *r == resource)
}

fn decode<M: Message + Default>(env: &Envelope) -> Result<M, ProtobufError> {
    M::decode(env.raw.as_slice()).map_err(|e| ProtobufError::Object {
        kind: env.type_name(),
        reason: e.to_string(),
    })
}

/// Checks a protobuf body sent to `resource` (with `subresource`): decodes kinds that carry a
/// pod template and returns the privileged setting found, if any. Errors mean the body cannot
/// be vouched for and must be refused.
pub fn privileged_setting(
    env: &Envelope,
    resource: &str,
    subresource: Option<&str>,
) -> Result<Option<&'static str>, ProtobufError> {
    use k8s_pb::api::{apps, batch, core};
    let expected = POD_RESOURCES
        .iter()
        .find(|(r, _)| *r == resource)
        .map(|(_, k)| *k);
    // The object itself (no subresource, or `status`) must be the resource's kind; other
    // subresources (`scale`, `eviction`, `binding`) take their own kinds.
    if let Some(expected) = expected
        && matches!(subresource, None | Some("status"))
        && env.kind != expected
    {
        return Err(ProtobufError::KindMismatch {
            found: env.type_name(),
            resource: resource.to_string(),
        });
    }
    if !POD_KINDS.contains(&env.kind.as_str()) {
        return Ok(None);
    }
    let tmpl = |t: Option<core::v1::PodTemplateSpec>| t.and_then(|t| t.spec);
    let spec: Option<PodSpec> = match (env.api_version.as_str(), env.kind.as_str()) {
        ("v1", "Pod") => decode::<core::v1::Pod>(env)?.spec,
        ("v1", "PodTemplate") => tmpl(decode::<core::v1::PodTemplate>(env)?.template),
        ("v1", "ReplicationController") => decode::<core::v1::ReplicationController>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("apps/v1", "Deployment") => decode::<apps::v1::Deployment>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("apps/v1", "ReplicaSet") => decode::<apps::v1::ReplicaSet>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("apps/v1", "StatefulSet") => decode::<apps::v1::StatefulSet>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("apps/v1", "DaemonSet") => decode::<apps::v1::DaemonSet>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("batch/v1", "Job") => decode::<batch::v1::Job>(env)?
            .spec
            .and_then(|s| tmpl(s.template)),
        ("batch/v1", "CronJob") => decode::<batch::v1::CronJob>(env)?
            .spec
            .and_then(|s| s.job_template)
            .and_then(|j| j.spec)
            .and_then(|s| tmpl(s.template)),
        _ => return Err(ProtobufError::UnknownVersion(env.type_name())),
    };
    Ok(spec.as_ref().and_then(privileged_pod_spec))
}

/// The privileged settings of [`crate::request::privileged_spec`], on a typed pod spec.
pub fn privileged_pod_spec(spec: &PodSpec) -> Option<&'static str> {
    if spec.host_pid == Some(true) {
        return Some("hostPID");
    }
    if spec.host_network == Some(true) {
        return Some("hostNetwork");
    }
    if spec.host_ipc == Some(true) {
        return Some("hostIPC");
    }
    if spec.volumes.iter().any(|v| {
        v.volume_source
            .as_ref()
            .is_some_and(|s| s.host_path.is_some())
    }) {
        return Some("hostPath volume");
    }
    let contexts = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .map(|c| c.security_context.as_ref())
        .chain(spec.ephemeral_containers.iter().map(|e| {
            e.ephemeral_container_common
                .as_ref()
                .and_then(|c| c.security_context.as_ref())
        }));
    for sc in contexts.flatten() {
        if sc.privileged == Some(true) {
            return Some("securityContext.privileged");
        }
        if sc.allow_privilege_escalation == Some(true) {
            return Some("allowPrivilegeEscalation");
        }
    }
    None
}

/// Encodes `msg` as a Kubernetes protobuf body (what client-go sends), for tests and tools.
pub fn encode_body(api_version: &str, kind: &str, msg: &impl Message) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(msg.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&unknown.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::apps::v1::{Deployment, DeploymentSpec};
    use k8s_pb::api::core::v1::{
        ConfigMap, Container, HostPathVolumeSource, Pod, PodTemplateSpec, SecurityContext, Volume,
        VolumeSource,
    };

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            spec: Some(spec),
            ..Pod::default()
        }
    }

    fn container(sc: Option<SecurityContext>) -> Container {
        Container {
            name: Some("a".into()),
            image: Some("x".into()),
            security_context: sc,
            ..Container::default()
        }
    }

    #[test]
    fn plain_and_privileged_pods() {
        let plain = encode_body(
            "v1",
            "Pod",
            &pod(PodSpec {
                containers: vec![container(None)],
                ..PodSpec::default()
            }),
        );
        let env = read_envelope(&plain).unwrap();
        assert_eq!(env.type_name(), "v1/Pod");
        assert_eq!(privileged_setting(&env, "pods", None).unwrap(), None);

        let cases: Vec<(PodSpec, &str)> = vec![
            (
                PodSpec {
                    host_pid: Some(true),
                    ..PodSpec::default()
                },
                "hostPID",
            ),
            (
                PodSpec {
                    host_network: Some(true),
                    ..PodSpec::default()
                },
                "hostNetwork",
            ),
            (
                PodSpec {
                    volumes: vec![Volume {
                        name: Some("h".into()),
                        volume_source: Some(VolumeSource {
                            host_path: Some(HostPathVolumeSource {
                                path: Some("/".into()),
                                ..HostPathVolumeSource::default()
                            }),
                            ..VolumeSource::default()
                        }),
                    }],
                    ..PodSpec::default()
                },
                "hostPath volume",
            ),
            (
                PodSpec {
                    init_containers: vec![container(Some(SecurityContext {
                        privileged: Some(true),
                        ..SecurityContext::default()
                    }))],
                    ..PodSpec::default()
                },
                "securityContext.privileged",
            ),
        ];
        for (spec, want) in cases {
            let env = read_envelope(&encode_body("v1", "Pod", &pod(spec))).unwrap();
            assert_eq!(privileged_setting(&env, "pods", None).unwrap(), Some(want));
        }
    }

    #[test]
    fn a_field_sent_twice_decides_like_the_server_reads_it() {
        // hostPID=false, then hostPID=true appended: protobuf's last value wins.
        let first = pod(PodSpec {
            host_pid: Some(false),
            ..PodSpec::default()
        });
        let second = pod(PodSpec {
            host_pid: Some(true),
            ..PodSpec::default()
        });
        let mut raw = first.encode_to_vec();
        raw.extend(second.encode_to_vec());
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        let env = read_envelope(&body).unwrap();
        assert_eq!(
            privileged_setting(&env, "pods", None).unwrap(),
            Some("hostPID")
        );
    }

    #[test]
    fn workloads_are_read_through_their_templates() {
        let d = Deployment {
            spec: Some(DeploymentSpec {
                template: Some(PodTemplateSpec {
                    spec: Some(PodSpec {
                        host_ipc: Some(true),
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                }),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        };
        let env = read_envelope(&encode_body("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(
            privileged_setting(&env, "deployments", None).unwrap(),
            Some("hostIPC")
        );
        // An old API version of a pod-carrying kind is not guessed at.
        let env = read_envelope(&encode_body("extensions/v1beta1", "Deployment", &d)).unwrap();
        assert!(matches!(
            privileged_setting(&env, "deployments", None),
            Err(ProtobufError::UnknownVersion(_))
        ));
    }

    #[test]
    fn envelopes_that_cannot_be_vouched_for() {
        let cm = ConfigMap::default();
        assert_eq!(read_envelope(b"{}"), Err(ProtobufError::NoMagic));
        assert!(matches!(
            read_envelope(b"k8s\0\xff\xff\xff"),
            Err(ProtobufError::Envelope(_))
        ));
        // No kind: the API server would take the URL's kind, unseen by the gateway.
        assert!(matches!(
            read_envelope(&encode_body("v1", "", &cm)),
            Err(ProtobufError::Envelope(_))
        ));
        // A ConfigMap envelope sent to `pods`.
        let env = read_envelope(&encode_body("v1", "ConfigMap", &cm)).unwrap();
        assert!(matches!(
            privileged_setting(&env, "pods", None),
            Err(ProtobufError::KindMismatch { .. })
        ));
        assert_eq!(privileged_setting(&env, "configmaps", None).unwrap(), None);
        // A Pod whose bytes do not decode.
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
            }),
            raw: Some(vec![0x12, 0x05, 0x01]),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        let env = read_envelope(&body).unwrap();
        assert!(matches!(
            privileged_setting(&env, "pods", None),
            Err(ProtobufError::Object { .. })
        ));
    }

    #[test]
    fn media_type() {
        assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(is_protobuf(
            "Application/VND.kubernetes.protobuf; charset=x"
        ));
        assert!(!is_protobuf("application/json"));
        assert!(!is_protobuf("application/vnd.kubernetes.protobuf+x"));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for b in [
            &b""[..],
            b"k8s\0",
            b"k8s\0\x0a",
            b"k8s\0\x0a\x80",
            b"k8s\0\x12\xff\xff\xff\xff\x0f",
        ] {
            if let Ok(env) = read_envelope(b) {
                let _ = privileged_setting(&env, "pods", None);
            }
        }
    }
}
