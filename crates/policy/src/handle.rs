//! A policy that can be replaced while sessions run: readers take a cheap `Arc` snapshot, a
//! reload swaps the pointer; a decision in flight finishes on the policy it started with.

use std::sync::{Arc, RwLock};

use gatehouse_core::{Decision, Identity, Operation, Policy, Target};

use crate::{CompiledPolicy, Explanation, PolicyError};

/// The policy layer as the gateway holds it: implements [`Policy`] by delegating to the current
/// [`CompiledPolicy`], which [`PolicyHandle::swap`] / [`PolicyHandle::reload`] replace
/// atomically.
#[derive(Debug)]
pub struct PolicyHandle {
    current: RwLock<Arc<CompiledPolicy>>,
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: CompiledPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
        }
    }

    /// The current policy (a snapshot: later swaps do not affect it).
    pub fn load(&self) -> Arc<CompiledPolicy> {
        // The lock only guards a pointer swap, so a poisoned lock still holds a valid Arc.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the policy; returns the previous one.
    pub fn swap(&self, policy: CompiledPolicy) -> Arc<CompiledPolicy> {
        let new = Arc::new(policy);
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *guard, new)
    }

    /// Compiles `text` and swaps it in. On error the current policy stays in force.
    pub fn reload(&self, text: &str, file: &str) -> Result<(), PolicyError> {
        let policy = CompiledPolicy::from_toml(text, file)?;
        self.swap(policy);
        Ok(())
    }

    /// [`CompiledPolicy::explain`] on the current policy.
    pub fn explain(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
    ) -> Explanation {
        self.load().explain(identity, target, operation)
    }
}

impl Policy for PolicyHandle {
    fn decide(&self, identity: &Identity, target: &Target, operation: &Operation) -> Decision {
        self.load().decide(identity, target, operation)
    }

    fn decide_with_opaque(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        opaque: &[(usize, String)],
    ) -> Decision {
        self.load()
            .decide_with_opaque(identity, target, operation, opaque)
    }

    fn decide_classified(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &gatehouse_core::Classified,
    ) -> Decision {
        self.load().decide_classified(identity, target, operation)
    }
}
