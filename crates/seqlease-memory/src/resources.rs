//! Resource leases in the in-memory store: the compare-and-swap rules of
//! `Store::resources`, with epochs that only ever grow.

use seqlease_core::{
    LeaseError, ResourceCommand, ResourceEvent, ResourceEventKind, ResourceLease, ResourceQuery,
    ResourceReply, Timestamp,
};

/// A resource's record. It outlives every lease on it, so the epoch never goes back.
#[derive(Debug)]
struct Record {
    epoch: u64,
    /// The current or last lease.
    lease: Option<ResourceLease>,
    released: bool,
}

impl Record {
    fn live(&self, now: Timestamp) -> Option<&ResourceLease> {
        self.lease
            .as_ref()
            .filter(|l| !self.released && l.expires_at > now)
    }
}

/// Every resource and the audit history.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    records: foldhash::HashMap<String, Record>,
    history: Vec<ResourceEvent>,
}

impl Resources {
    pub(crate) fn epoch(&self, resource: &str) -> u64 {
        self.records.get(resource).map_or(0, |r| r.epoch)
    }

    fn audit(
        &mut self,
        resource: &str,
        kind: ResourceEventKind,
        agent: &str,
        actor: &str,
        epoch: u64,
        at: Timestamp,
    ) {
        let event = ResourceEvent {
            resource: resource.into(),
            kind,
            agent: agent.into(),
            actor: actor.into(),
            epoch,
            at,
        };
        self.history.push(event);
    }

    pub(crate) fn apply(
        &mut self,
        command: ResourceCommand,
        now: Timestamp,
    ) -> Result<ResourceReply, LeaseError> {
        match command {
            ResourceCommand::Acquire {
                resource,
                agent,
                ttl,
                max_renewals,
                metadata,
            } => {
                let record = self.records.entry(resource.clone()).or_insert(Record {
                    epoch: 0,
                    lease: None,
                    released: true,
                });
                if let Some(live) = record.live(now) {
                    if live.holder != agent {
                        let (holder, epoch, expires_at) =
                            (live.holder.clone(), live.epoch, live.expires_at);
                        self.audit(
                            &resource,
                            ResourceEventKind::Conflict,
                            &agent,
                            &agent,
                            epoch,
                            now,
                        );
                        return Err(LeaseError::ResourceHeld {
                            resource,
                            holder,
                            epoch,
                            expires_at,
                        });
                    }
                    let epoch = live.epoch;
                    return self.apply(
                        ResourceCommand::Renew {
                            resource,
                            agent,
                            epoch,
                            ttl,
                        },
                        now,
                    );
                }
                if let Some(stale) = record.lease.as_ref().filter(|_| !record.released) {
                    let (holder, epoch) = (stale.holder.clone(), stale.epoch);
                    record.released = true;
                    self.audit(
                        &resource,
                        ResourceEventKind::Expired,
                        &holder,
                        "store",
                        epoch,
                        now,
                    );
                }
                let record = self.records.get_mut(&resource).expect("inserted above");
                record.epoch += 1;
                record.released = false;
                let lease = ResourceLease {
                    resource: resource.clone(),
                    holder: agent.clone(),
                    epoch: record.epoch,
                    acquired_at: now,
                    expires_at: now.plus(ttl),
                    renewals: 0,
                    max_renewals,
                    metadata,
                };
                record.lease = Some(lease.clone());
                self.audit(
                    &resource,
                    ResourceEventKind::Acquired,
                    &agent,
                    &agent,
                    lease.epoch,
                    now,
                );
                Ok(ResourceReply::Held(lease))
            }
            ResourceCommand::Renew {
                resource,
                agent,
                epoch,
                ttl,
            } => {
                let current = self.epoch(&resource);
                let not_held = || LeaseError::ResourceNotHeld {
                    resource: resource.clone(),
                    agent: agent.clone(),
                    epoch,
                    current,
                };
                let record = self.records.get_mut(&resource).ok_or_else(not_held)?;
                let live = record
                    .live(now)
                    .is_some_and(|l| l.holder == agent && l.epoch == epoch);
                if !live {
                    return Err(not_held());
                }
                let lease = record.lease.as_mut().expect("live");
                if let Some(max) = lease.max_renewals.filter(|max| lease.renewals >= *max) {
                    return Err(LeaseError::MaxRenewals { resource, max });
                }
                lease.renewals += 1;
                lease.expires_at = now.plus(ttl);
                let lease = lease.clone();
                self.audit(
                    &resource,
                    ResourceEventKind::Renewed,
                    &agent,
                    &agent,
                    epoch,
                    now,
                );
                Ok(ResourceReply::Held(lease))
            }
            ResourceCommand::Release {
                resource,
                agent,
                epoch,
            } => {
                let current = self.epoch(&resource);
                let record = self.records.get_mut(&resource);
                let holds = record.as_ref().is_some_and(|r| {
                    !r.released
                        && r.lease
                            .as_ref()
                            .is_some_and(|l| l.holder == agent && l.epoch == epoch)
                });
                if !holds {
                    return Err(LeaseError::ResourceNotHeld {
                        resource,
                        agent,
                        epoch,
                        current,
                    });
                }
                record.expect("checked").released = true;
                self.audit(
                    &resource,
                    ResourceEventKind::Released,
                    &agent,
                    &agent,
                    epoch,
                    now,
                );
                Ok(ResourceReply::Released)
            }
            ResourceCommand::ReleaseAll { agent, actor } => {
                let held: Vec<(String, u64)> = self
                    .records
                    .iter_mut()
                    .filter(|(_, r)| {
                        !r.released && r.lease.as_ref().is_some_and(|l| l.holder == agent)
                    })
                    .map(|(name, r)| {
                        r.released = true;
                        (name.clone(), r.epoch)
                    })
                    .collect();
                let kind = if actor == agent {
                    ResourceEventKind::Released
                } else {
                    ResourceEventKind::ForceReleased
                };
                for (resource, epoch) in &held {
                    self.audit(resource, kind, &agent, &actor, *epoch, now);
                }
                Ok(ResourceReply::Count(held.len() as u64))
            }
            ResourceCommand::ExpireStale => {
                let expired: Vec<(String, String, u64)> = self
                    .records
                    .iter_mut()
                    .filter(|(_, r)| {
                        !r.released && r.lease.as_ref().is_some_and(|l| l.expires_at <= now)
                    })
                    .map(|(name, r)| {
                        r.released = true;
                        (
                            name.clone(),
                            r.lease
                                .as_ref()
                                .map(|l| l.holder.clone())
                                .unwrap_or_default(),
                            r.epoch,
                        )
                    })
                    .collect();
                for (resource, holder, epoch) in &expired {
                    self.audit(
                        resource,
                        ResourceEventKind::Expired,
                        holder,
                        "store",
                        *epoch,
                        now,
                    );
                }
                Ok(ResourceReply::Count(expired.len() as u64))
            }
        }
    }

    pub(crate) fn query(&self, query: &ResourceQuery, now: Timestamp) -> Vec<ResourceLease> {
        let mut out: Vec<ResourceLease> = match query {
            ResourceQuery::Resource(name) => self
                .records
                .get(name)
                .and_then(|r| r.live(now))
                .cloned()
                .into_iter()
                .collect(),
            ResourceQuery::Agent(agent) => self
                .records
                .values()
                .filter_map(|r| r.live(now))
                .filter(|l| &l.holder == agent)
                .cloned()
                .collect(),
            ResourceQuery::Active => self
                .records
                .values()
                .filter_map(|r| r.live(now))
                .cloned()
                .collect(),
        };
        out.sort_by(|a, b| a.resource.cmp(&b.resource));
        out
    }

    pub(crate) fn history(&self, resource: Option<&str>, limit: usize) -> Vec<ResourceEvent> {
        let matching: Vec<&ResourceEvent> = self
            .history
            .iter()
            .filter(|e| resource.is_none_or(|r| e.resource == r))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }
}
