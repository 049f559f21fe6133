//! Reads a Rust source file with syn and lists every path it names: the
//! `use` trees, the qualified paths in code, types and attributes, and the
//! paths in macro bodies (token sequences `a::b`). Each is resolved through
//! the imports of its scope to an absolute form (`crate::store::Store`,
//! `tokio::spawn`, `std::time::Instant::now`) for the rules in `tidy.rs`.

use std::collections::{BTreeSet, HashMap};

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::visit::{self, Visit};

/// One path a file names, resolved.
#[derive(Debug, Clone)]
pub struct NamedPath {
    /// `["crate", "store", "Store"]`, `["tokio", "spawn"]`.
    pub segments: Vec<String>,
    pub line: usize,
    /// Inside a `#[cfg(test)]` item or a `#[test]` function.
    pub in_test: bool,
}

impl NamedPath {
    pub fn text(&self) -> String {
        self.segments.join("::")
    }
}

/// Every path of `source`, a file of the module `module` (`["crate", "node", "jobs"]`).
/// `externs` are the crate names a path may start with (std and the dependencies);
/// `lib_name` is the library's own name, read as `crate` (the binaries use it).
pub fn named_paths(
    source: &str,
    module: &[String],
    externs: &BTreeSet<String>,
    lib_name: &str,
) -> syn::Result<Vec<NamedPath>> {
    let file = syn::parse_file(source)?;
    let mut collector =
        Collector { externs, lib_name, module: module.to_vec(), scopes: Vec::new(), test_depth: 0, found: Vec::new() };
    collector.enter_scope(&file.items, true);
    for attr in &file.attrs {
        collector.visit_attribute(attr);
    }
    for item in &file.items {
        collector.visit_item(item);
    }
    Ok(collector.found)
}

/// Names a `use` brings into one scope (a module or a block).
struct Scope {
    names: HashMap<String, Vec<String>>,
    /// A module: name lookup stops here (inner modules do not see outer imports).
    module_boundary: bool,
}

struct Collector<'a> {
    externs: &'a BTreeSet<String>,
    lib_name: &'a str,
    module: Vec<String>,
    scopes: Vec<Scope>,
    test_depth: usize,
    found: Vec<NamedPath>,
}

/// A `use` tree flattened: the path as written, the name it binds (none for a glob), its leaf.
struct UseLeaf {
    written: Vec<String>,
    binds: Option<String>,
    span: Span,
}

fn flatten(tree: &syn::UseTree, prefix: &[String], out: &mut Vec<UseLeaf>) {
    let with = |ident: &syn::Ident| [prefix, &[ident.to_string()]].concat();
    match tree {
        syn::UseTree::Path(p) => flatten(&p.tree, &with(&p.ident), out),
        syn::UseTree::Name(n) if n.ident == "self" => {
            out.push(UseLeaf { written: prefix.to_vec(), binds: prefix.last().cloned(), span: n.ident.span() })
        }
        syn::UseTree::Name(n) => {
            out.push(UseLeaf { written: with(&n.ident), binds: Some(n.ident.to_string()), span: n.ident.span() })
        }
        syn::UseTree::Rename(r) => {
            out.push(UseLeaf { written: with(&r.ident), binds: Some(r.rename.to_string()), span: r.rename.span() })
        }
        syn::UseTree::Glob(g) => out.push(UseLeaf { written: prefix.to_vec(), binds: None, span: g.star_token.span }),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| flatten(t, prefix, out)),
    }
}

fn is_test_attr(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    if path.segments.last().is_some_and(|s| s.ident == "test") {
        return true; // #[test], #[tokio::test]
    }
    let syn::Meta::List(list) = &attr.meta else { return false };
    let idents: Vec<String> = idents_in(list.tokens.clone());
    path.is_ident("cfg") && idents.iter().any(|i| i == "test") && !idents.iter().any(|i| i == "not")
}

fn idents_in(tokens: TokenStream) -> Vec<String> {
    let mut out = Vec::new();
    for tree in tokens {
        match tree {
            TokenTree::Ident(i) => out.push(i.to_string()),
            TokenTree::Group(g) => out.extend(idents_in(g.stream())),
            _ => {}
        }
    }
    out
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl Collector<'_> {
    /// Makes a path absolute: `crate::..`, `self::..`, `super::..`, an import
    /// of this scope, or an extern crate. A name of this module (a local type,
    /// a child module) gives None: it cannot leave the module.
    fn resolve(&self, written: &[String], leading_colon: bool, in_use: bool) -> Option<Vec<String>> {
        let first = written.first()?;
        if leading_colon {
            return Some(written.to_vec());
        }
        match first.as_str() {
            "crate" => return Some(written.to_vec()),
            "self" => return Some([&self.module[..], &written[1..]].concat()),
            "super" => {
                let ups = written.iter().take_while(|s| *s == "super").count();
                let base = &self.module[..self.module.len().saturating_sub(ups).max(1)];
                return Some([base, &written[ups..]].concat());
            }
            "Self" => return None,
            _ => {}
        }
        if let Some(target) = self.lookup(first) {
            return Some([&target[..], &written[1..]].concat());
        }
        if first == self.lib_name {
            return Some([&["crate".to_string()][..], &written[1..]].concat());
        }
        if self.externs.contains(first) {
            return Some(written.to_vec());
        }
        // `use child::Item` names this module's own child; a path `Type::f` a local item.
        in_use.then(|| [&self.module[..], written].concat())
    }

    fn lookup(&self, name: &str) -> Option<&Vec<String>> {
        for scope in self.scopes.iter().rev() {
            if let Some(target) = scope.names.get(name) {
                return Some(target);
            }
            if scope.module_boundary {
                break;
            }
        }
        None
    }

    /// Opens a scope with the names its `use` items bind (before any path in it is read).
    fn enter_scope(&mut self, items: &[syn::Item], module_boundary: bool) {
        self.scopes.push(Scope { names: HashMap::new(), module_boundary });
        let mut leaves = Vec::new();
        for item in items {
            if let syn::Item::Use(u) = item {
                flatten(&u.tree, &[], &mut leaves);
            }
        }
        // Two rounds: `use tonic::codegen::http; use http::Request;` reads the first.
        for _ in 0..2 {
            for leaf in &leaves {
                let Some(name) = &leaf.binds else { continue };
                if let Some(target) = self.resolve(&leaf.written, false, true)
                    && let Some(scope) = self.scopes.last_mut()
                {
                    scope.names.insert(name.clone(), target);
                }
            }
        }
    }

    fn record(&mut self, segments: Vec<String>, span: Span) {
        let in_test = self.test_depth > 0;
        self.found.push(NamedPath { segments, line: span.start().line, in_test });
    }

    /// `a::b::c` sequences in a macro body or an attribute's arguments.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(ident) => {
                    let span = ident.span();
                    let mut written = vec![ident.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                        (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        written.push(next.to_string());
                        j += 3;
                    }
                    if written.len() > 1
                        && let Some(resolved) = self.resolve(&written, false, false)
                    {
                        self.record(resolved, span);
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let test = item_attrs(item).iter().any(is_test_attr);
        self.test_depth += usize::from(test);
        visit::visit_item(self, item);
        self.test_depth -= usize::from(test);
    }

    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        for attr in &module.attrs {
            self.visit_attribute(attr);
        }
        let Some((_, items)) = &module.content else { return };
        self.module.push(module.ident.to_string());
        self.enter_scope(items, true);
        for item in items {
            self.visit_item(item);
        }
        self.scopes.pop();
        self.module.pop();
    }

    fn visit_block(&mut self, block: &'ast syn::Block) {
        let items: Vec<syn::Item> = block
            .stmts
            .iter()
            .filter_map(|s| match s {
                syn::Stmt::Item(item @ syn::Item::Use(_)) => Some(item.clone()),
                _ => None,
            })
            .collect();
        self.enter_scope(&items, false);
        visit::visit_block(self, block);
        self.scopes.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        flatten(&item.tree, &[], &mut leaves);
        for leaf in leaves {
            if let Some(resolved) = self.resolve(&leaf.written, item.leading_colon.is_some(), true) {
                self.record(resolved, leaf.span);
            }
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let written: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if (written.len() > 1 || path.leading_colon.is_some())
            && let Some(resolved) = self.resolve(&written, path.leading_colon.is_some(), false)
        {
            let span = path.segments.first().map_or_else(Span::call_site, |s| s.ident.span());
            self.record(resolved, span);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        self.scan_tokens(mac.tokens.clone());
    }

    fn visit_meta_list(&mut self, list: &'ast syn::MetaList) {
        visit::visit_meta_list(self, list);
        self.scan_tokens(list.tokens.clone());
    }
}
