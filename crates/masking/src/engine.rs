//! [`MaskingEngine`]: every compiled profile, and the [`Masker`] the gateway layers call.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse_core::{FieldDesc, FieldPlan, Finding, Masker, StreamContext, StreamMasker};

use crate::config::{MaskingConfig, ProfileConfig};
use crate::error::MaskingError;
use crate::json::JsonStreamMasker;
use crate::plan::ProfilePlan;
use crate::profile::MaskingProfile;
use crate::stream::TextStreamMasker;

/// The name of the profile that always exists.
pub const DEFAULT_PROFILE: &str = "default";

/// All compiled profiles. Build once at startup, share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct MaskingEngine {
    profiles: BTreeMap<String, Arc<MaskingProfile>>,
    default: Arc<MaskingProfile>,
}

impl MaskingEngine {
    /// Compiles every profile of `config`. The `default` profile exists even when not
    /// configured (the built-in default detector set, redact strategy).
    pub fn new(config: &MaskingConfig) -> Result<MaskingEngine, MaskingError> {
        let mut profiles = BTreeMap::new();
        for (name, p) in &config.profiles {
            profiles.insert(name.clone(), Arc::new(MaskingProfile::compile(name, p)?));
        }
        if !profiles.contains_key(DEFAULT_PROFILE) {
            let p = MaskingProfile::compile(DEFAULT_PROFILE, &ProfileConfig::default())?;
            profiles.insert(DEFAULT_PROFILE.to_string(), Arc::new(p));
        }
        let default_name = config.default_profile.as_deref().unwrap_or(DEFAULT_PROFILE);
        let default = profiles
            .get(default_name)
            .cloned()
            .ok_or_else(|| MaskingError::UnknownDefaultProfile(default_name.to_string()))?;
        Ok(MaskingEngine { profiles, default })
    }

    /// The built-in default profile only.
    pub fn with_defaults() -> Result<MaskingEngine, MaskingError> {
        MaskingEngine::new(&MaskingConfig::default())
    }

    /// Whether `name` is a configured profile (the binary checks every profile a policy names
    /// at startup, so that the fallback below never happens silently).
    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// The profile called `name`; `None` or an unknown name gives the default profile (which
    /// masks with every default detector: an unknown name never means "mask nothing").
    pub fn profile(&self, name: Option<&str>) -> &Arc<MaskingProfile> {
        name.and_then(|n| self.profiles.get(n))
            .unwrap_or(&self.default)
    }

    /// Masks `input` in one shot with the default profile.
    pub fn mask_bytes<'a>(&self, input: &'a [u8]) -> (Cow<'a, [u8]>, Vec<Finding>) {
        self.default.mask_bytes(input)
    }

    /// Masks a whole JSON document in one shot.
    pub fn mask_json<'a>(
        &self,
        profile: Option<&str>,
        input: &'a [u8],
    ) -> (Cow<'a, [u8]>, Vec<Finding>) {
        let mut m = JsonStreamMasker::new(Arc::clone(self.profile(profile)), None);
        let mut out = Vec::with_capacity(input.len());
        m.push(input, &mut out);
        m.finish(&mut out);
        let findings = m.take_findings();
        if out == input {
            (Cow::Borrowed(input), findings)
        } else {
            (Cow::Owned(out), findings)
        }
    }

    /// A text stream masker.
    pub fn text_stream(&self, profile: Option<&str>, field: Option<String>) -> TextStreamMasker {
        TextStreamMasker::new(Arc::clone(self.profile(profile)), field)
    }

    /// A JSON stream masker.
    pub fn json_stream(&self, profile: Option<&str>, field: Option<String>) -> JsonStreamMasker {
        JsonStreamMasker::new(Arc::clone(self.profile(profile)), field)
    }
}

impl Masker for MaskingEngine {
    fn plan(&self, fields: &[FieldDesc], profile: Option<&str>) -> Box<dyn FieldPlan> {
        Box::new(ProfilePlan::new(Arc::clone(self.profile(profile)), fields))
    }

    fn stream(&self, context: &StreamContext) -> Box<dyn StreamMasker> {
        let profile = context.profile.as_deref();
        if context.json {
            Box::new(self.json_stream(profile, context.field.clone()))
        } else {
            Box::new(self.text_stream(profile, context.field.clone()))
        }
    }

    fn masks_columns(&self, profile: Option<&str>) -> bool {
        self.profile(profile).masks_columns()
    }
}
