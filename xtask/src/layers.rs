//! The crates' modules form layers: no module imports one that imports it back, and
//! the agent's bottom layer (`node`) imports nothing of the agent's. Checked on the
//! sources with `syn`: every `crate::`/`super::` path and `use` tree outside test
//! code, resolved to the module file it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use syn::visit::Visit;

/// A module, as its path from the crate root (`["agent", "state_loop"]`).
type Module = Vec<String>;

/// Each module of the crate whose root dir is `src`, and the modules it imports.
fn imports(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &files {
        let mut paths = Paths::default();
        paths.visit_file(file);
        let parent = &module[..module.len().saturating_sub(1)];
        let mut out = BTreeSet::new();
        for path in paths.0 {
            let (base, rest) = match path.first().map(String::as_str) {
                Some("crate") => (&[][..], &path[1..]),
                Some("super") => (parent, &path[1..]),
                _ => continue,
            };
            let full: Vec<String> = base.iter().chain(rest).cloned().collect();
            // The longest module the path names; a module's own ancestors are not
            // imports (a child sees its parent's items by nesting).
            if let Some(target) = (1..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|m| modules.contains(m))
                && !module.starts_with(&target)
            {
                out.insert(target);
            }
        }
        graph.insert(module.clone(), out);
    }
    graph
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<Module, syn::File>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                collect(root, &path, files);
            }
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut module: Module = (rel.iter())
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if matches!(module.last().map(String::as_str), Some("tests")) {
            continue;
        }
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files.insert(module, file);
    }
}

/// The `crate::`/`super::` paths of a file, test code left out.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => self.0.push(prefix.clone()),
            syn::UseTree::Name(n) => self.0.push([&prefix[..], &[n.ident.to_string()]].concat()),
            syn::UseTree::Rename(r) => {
                self.0.push([&prefix[..], &[r.ident.to_string()]].concat());
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(prefix, t)),
        }
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        if !is_test(&u.attrs) {
            self.tree(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'a syn::Path) {
        self.0
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// The cycles of `graph`: its strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju: the reverse graph's components, in the order of the forward finish.
    fn finish(
        g: &BTreeMap<Module, BTreeSet<Module>>,
        v: &Module,
        seen: &mut BTreeSet<Module>,
        out: &mut Vec<Module>,
    ) {
        if seen.insert(v.clone()) {
            for w in g.get(v).into_iter().flatten() {
                finish(g, w, seen, out);
            }
            out.push(v.clone());
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for v in graph.keys() {
        finish(graph, v, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (v, ws) in graph {
        for w in ws {
            reverse.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut component = Vec::new();
        finish(&reverse, v, &mut seen, &mut component);
        if component.len() > 1 {
            out.push(component);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        for krate in ["agent", "lab", "lab-consumer", "xtask", "agent-common"] {
            let graph = imports(&cmd::workspace_root().join(krate).join("src"));
            assert!(graph.len() > 1, "{krate}: no modules found");
            let found: Vec<String> = (cycles(&graph).iter())
                .map(|c| {
                    c.iter()
                        .map(|m| m.join("::"))
                        .collect::<Vec<_>>()
                        .join(" <-> ")
                })
                .collect();
            assert!(found.is_empty(), "{krate}: import cycles: {found:#?}");
        }
    }

    #[test]
    fn the_node_layer_imports_nothing_of_the_agent() {
        let graph = imports(&cmd::workspace_root().join("agent/src"));
        for (module, imported) in graph
            .iter()
            .filter(|(m, _)| m.first().is_some_and(|m| m == "node"))
        {
            let outside: Vec<_> = imported.iter().filter(|m| m[0] != "node").collect();
            assert!(outside.is_empty(), "{module:?} imports {outside:?}");
        }
    }

    /// The check sees a cycle where there is one: two files importing each other.
    #[test]
    fn a_cycle_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("lib.rs", "mod a; mod b; mod c;");
        write("a.rs", "use crate::b::B; pub struct A;");
        write(
            "b.rs",
            "pub struct B(super::a::A);\n#[cfg(test)] mod tests { use crate::c::C; }",
        );
        write("c.rs", "pub struct C; fn f() -> crate::a::A { todo!() }");
        let graph = imports(dir.path());
        let found = cycles(&graph);
        assert_eq!(found.len(), 1, "{found:?}");
        let mut names: Vec<String> = found[0].iter().map(|m| m.join("::")).collect();
        names.sort();
        assert_eq!(names, ["a", "b"], "c is imported by test code only");
    }
}
