//! The walker's inotify events: swaps, dirs created and removed, overflows, and the
//! tick that re-watches roots and tmpfs mounts appearing late.

// The walker's own imports and items: this is its second half.
use super::*;

impl Walker {
    /// Re-watches tmpfs volumes whose mount appeared since they were found.
    pub async fn tick(&mut self) {
        let appeared: Vec<PathBuf> = (self.missing.iter())
            .filter(|r| r.is_dir())
            .cloned()
            .collect();
        for root in appeared {
            info!(root = %root.display(), "kubelet root appeared");
            self.missing.remove(&root);
            self.add_root(&root).await;
        }
        self.retry_unfollowed().await;
        if self.logs_missing && self.pod_logs.is_dir() {
            info!(dir = %self.pod_logs.display(), "pod-logs dir appeared");
            self.add_pod_logs().await;
        }
        let now = Instant::now();
        let mut mounted = Vec::new();
        self.unmounted.retain(|(key, dir, parent_dev, deadline)| {
            if dev(dir).is_some_and(|d| d != *parent_dev) {
                mounted.push(dir.clone());
                return false;
            }
            if now >= *deadline {
                debug!(volume = %key, "no tmpfs mount appeared; watching the dir as it is");
                return false;
            }
            true
        });
        for dir in mounted {
            self.add_volume(&dir).await;
        }
    }

    /// Handles one inotify event.
    pub async fn handle(&mut self, ev: inotify::Event<std::ffi::OsString>) {
        self.handle_read(Read {
            event: ev,
            marked: None,
        })
        .await
    }

    /// Handles one event from the reader, which may have marked the data dir it reports.
    pub async fn handle_read(&mut self, read: Read) {
        let Read { event: ev, marked } = read;
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue overflowed; rescanning every root");
            self.send(Event::InotifyOverflow).await;
            // A swap whose dir's creation was dropped must not be credited to an older dir.
            self.created.clear();
            self.touched = Some(HashSet::new());
            self.scan().await;
            self.sweep().await;
            return;
        }
        if ev.mask.contains(EventMask::IGNORED) {
            if let Some(path) = self.forget_node(&ev.wd)
                && self.by_path.get(&*path) == Some(&ev.wd)
            {
                self.by_path.remove(&*path);
            }
            return;
        }
        let Some((node, path)) = self.nodes.get(&ev.wd).cloned() else {
            return;
        };
        let Some(name) = ev.name.as_deref() else {
            if ev.mask.contains(EventMask::DELETE_SELF)
                && matches!(node, Node::PodsDir | Node::Root)
            {
                self.scan().await;
            }
            return;
        };
        let child = path.join(name);
        let appeared = ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        let vanished = ev
            .mask
            .intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        match node {
            Node::Root if appeared && name == "pods" => {
                self.unwatch(&ev.wd);
                self.add_pods_dir(&child).await;
            }
            Node::PodsDir if appeared => self.add_pod(&child).await,
            Node::PodsDir if vanished => {
                self.forget_under(&child);
                if let Some(uid) = name.to_str() {
                    self.send(Event::PodGone {
                        uid: uid.to_owned(),
                    })
                    .await;
                }
            }
            Node::Pod if appeared && name == "volumes" => {
                // The pod dir's watch was only waiting for this.
                self.unwatch(&ev.wd);
                self.add_volumes_dir(&child).await;
            }
            Node::VolumesDir if appeared => self.add_plugin_dir(&child).await,
            Node::PluginDir if appeared => self.add_volume(&child).await,
            Node::PluginDir if vanished => {
                self.forget_under(&child);
                if let Some(Ok(Place::Volume { key, rest: None })) = self.roots.classify(&child) {
                    self.send(Event::VolumeGone(key)).await;
                }
            }
            Node::Volume(key) if ev.mask.contains(EventMask::MOVED_TO) && name == DATA => {
                let at = SystemTime::now();
                // The dir created last is the one this swap put in place. `..data` is
                // read only when that creation was not seen: by now it may point to a
                // later dir already (a reader behind by several swaps of this volume).
                let created = self.created.remove(&*path);
                match created.or_else(|| read_target(&child)) {
                    Some(ts_dir) => {
                        let det = Detection {
                            source: Source::Inotify,
                            key,
                            ts_dir,
                            at,
                        };
                        self.send(Event::Detected(det)).await;
                    }
                    None => debug!(volume = %key, "..data gone before it could be read"),
                }
            }
            Node::Volume(key)
                if ev.mask.contains(EventMask::CREATE | EventMask::ISDIR)
                    && is_timestamped_dir(name) =>
            {
                let Some(ts_dir) = name.to_str() else { return };
                self.created.insert(path.to_path_buf(), ts_dir.to_owned());
                self.data_dir_created(key, &path, ts_dir.to_owned(), marked)
                    .await;
            }
            Node::PodLogs if appeared => self.pod_log_dir(name).await,
            _ => {}
        }
    }

    /// After an overflow's rescan: a watch the walk did not find again is on a dir
    /// removed meanwhile, whose `IN_IGNORED` the overflow dropped. Forgets it, and tells
    /// the state that its volume, or its pod, is gone.
    async fn sweep(&mut self) {
        let Some(touched) = self.touched.take() else {
            return;
        };
        let stale: Vec<_> = (self.nodes.iter())
            .filter(|(wd, _)| !touched.contains(wd))
            .map(|(wd, (node, path))| (wd.clone(), node.clone(), path.clone()))
            .collect();
        let mut pods = HashSet::new();
        for (wd, node, path) in stale {
            debug!(path = %path.display(), "removed during the overflow; watch forgotten");
            self.unwatch(&wd);
            match node {
                Node::Volume(key) => {
                    self.unmounted.retain(|(_, d, _, _)| **d != *path);
                    self.created.remove(&*path);
                    self.send(Event::VolumeGone(key)).await;
                }
                Node::Pod => {
                    pods.insert(path.to_path_buf());
                }
                Node::VolumesDir => {
                    pods.extend(path.parent().map(Path::to_owned));
                }
                _ => {}
            }
        }
        for pod in pods {
            if std::fs::symlink_metadata(&pod).is_err()
                && let Some(uid) = pod.file_name().and_then(OsStr::to_str)
            {
                let uid = uid.to_owned();
                self.send(Event::PodGone { uid }).await;
            }
        }
    }

    pub(super) fn unwatch(&mut self, wd: &WatchDescriptor) {
        let _ = self.watches.remove(wd.clone());
        if let Some(path) = self.forget_node(wd) {
            self.by_path.remove(&*path);
        }
    }

    /// Drops `wd` from the tree (and from the reader's volume dirs); returns its path.
    pub(super) fn forget_node(&mut self, wd: &WatchDescriptor) -> Option<Arc<Path>> {
        self.volume_dirs.remove(wd);
        self.nodes.remove(wd).map(|(_, path)| path)
    }

    /// Drops the watches at and below `dir` (a moved-away dir keeps its watches): in
    /// time linear in what it held, so that removing a pods dir of 10,000 volumes costs
    /// 10,000 steps, not 10,000 times the tree.
    fn forget_under(&mut self, dir: &Path) {
        let gone: Vec<WatchDescriptor> = (at_and_below(&self.by_path, dir))
            .filter_map(|p| self.by_path.get(p).cloned())
            .collect();
        for wd in gone {
            self.unwatch(&wd);
        }
        if !self.unmounted.is_empty() {
            self.unmounted.retain(|(_, d, _, _)| !d.starts_with(dir));
        }
        let created: Vec<PathBuf> = at_and_below(&self.created, dir).cloned().collect();
        for d in created {
            self.created.remove(&d);
        }
        let unfollowed: Vec<PathBuf> = at_and_below(&self.unfollowed, dir).cloned().collect();
        for d in &unfollowed {
            self.unfollowed.remove(d);
        }
        if !unfollowed.is_empty() {
            self.publish();
        }
    }
}
