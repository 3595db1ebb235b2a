//! managedFields as the API server keeps them for `Update` operations: per manager,
//! the fields it set or changed, and when it last changed any.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A leaf field of an object: its path of keys.
type FieldPath = Vec<String>;

/// The fields a manager can own: labels, annotations, and everything outside
/// `metadata` and `status` (data, binaryData, spec, type, ...). Objects are walked
/// into; anything else (arrays, strings, numbers) is one field.
fn owned_fields(obj: &Value) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    if let Some(v) = value.get(sub) {
                        leaves(v, vec!["metadata".into(), sub.into()], &mut out);
                    }
                }
            }
            _ => leaves(value, vec![key.clone()], &mut out),
        }
    }
    out
}

fn leaves(v: &Value, path: FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match v.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                let mut p = path.clone();
                p.push(k.clone());
                leaves(v, p, out);
            }
        }
        _ => {
            out.insert(path, v.clone());
        }
    }
}

/// Updates `new`'s managedFields for a write by `manager` at `time`, as an `Update`
/// operation does: the fields it set or changed become its own (and no longer
/// another manager's), removed fields are nobody's, its entry's time is the write's
/// when it changed anything, and managers left owning nothing are dropped.
pub(super) fn manage(old: &Value, new: &mut Value, manager: &str, time: &str) {
    let before = owned_fields(old);
    let after = owned_fields(new);
    let changed: BTreeSet<&FieldPath> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(*v))
        .map(|(p, _)| p)
        .collect();
    let removed: BTreeSet<&FieldPath> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    let mut entries: Vec<(String, String, BTreeSet<FieldPath>)> = old["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = BTreeSet::new();
            fields_from_v1(&e["fieldsV1"], Vec::new(), &mut set);
            (
                e["manager"].as_str().unwrap_or_default().to_owned(),
                e["time"].as_str().unwrap_or_default().to_owned(),
                set,
            )
        })
        .collect();
    for (m, _, set) in &mut entries {
        set.retain(|p| !removed.contains(p) && (m == manager || !changed.contains(p)));
    }
    if !changed.is_empty() || !removed.is_empty() {
        let mine = match entries.iter().position(|(m, _, _)| m == manager) {
            Some(i) => i,
            None => {
                entries.push((manager.to_owned(), String::new(), BTreeSet::new()));
                entries.len() - 1
            }
        };
        entries[mine].1 = time.to_owned();
        entries[mine].2.extend(changed.into_iter().cloned());
    }
    entries.retain(|(_, _, set)| !set.is_empty());
    let api_version = new["apiVersion"].clone();
    new["metadata"]["managedFields"] = Value::Array(
        entries
            .into_iter()
            .map(|(m, t, set)| {
                json!({
                    "manager": m,
                    "operation": "Update",
                    "apiVersion": api_version,
                    "time": t,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&set),
                })
            })
            .collect(),
    );
}

/// A field set as FieldsV1: `{"f:data": {"f:key": {}}}`.
fn fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for part in path {
            node = node
                .entry(format!("f:{part}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("field sets hold objects");
        }
    }
    Value::Object(root)
}

fn fields_from_v1(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = v.as_object() else { return };
    if map.is_empty() && !path.is_empty() {
        out.insert(path);
        return;
    }
    for (k, v) in map {
        if let Some(name) = k.strip_prefix("f:") {
            let mut p = path.clone();
            p.push(name.to_owned());
            fields_from_v1(v, p, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        super::store::{Resource, Store},
        *,
    };

    fn cm(data: Value) -> Value {
        json!({"metadata": {"name": "app", "namespace": "shop"}, "data": data})
    }

    fn managers(obj: &Value) -> Vec<(String, Value)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().to_owned(),
                    e["fieldsV1"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn managed_fields_follow_who_wrote_what() {
        let mut s = Store::default();
        s.create(
            Resource::ConfigMaps,
            cm(json!({"k": "1"})),
            "kubectl-create",
        )
        .unwrap();
        let (_, o) = s
            .update(Resource::ConfigMaps, "shop", "app", "kubectl-label", |o| {
                o["metadata"]["labels"] = json!({"tier": "web"});
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            managers(&o),
            [
                ("kubectl-create".into(), json!({"f:data": {"f:k": {}}})),
                (
                    "kubectl-label".into(),
                    json!({"f:metadata": {"f:labels": {"f:tier": {}}}})
                ),
            ]
        );
        // Another manager changing the data takes it over.
        let (_, o) = s
            .update(Resource::ConfigMaps, "shop", "app", "kubectl-edit", |o| {
                o["data"]["k"] = "2".into();
            })
            .unwrap()
            .unwrap();
        let names: Vec<String> = managers(&o).into_iter().map(|(m, _)| m).collect();
        assert_eq!(names, ["kubectl-label", "kubectl-edit"]);
    }
}
