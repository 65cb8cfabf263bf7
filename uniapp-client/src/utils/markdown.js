// A small, safe Markdown renderer for answers: it returns `rich-text` nodes (the node-array
// form, never an HTML string), so nothing in an answer can inject markup or attributes — text
// only ever becomes text nodes. Covers what chat answers use: fenced code blocks, inline code,
// headings, bold, lists, block quotes, links (shown as text), paragraphs and line breaks.
// An unclosed code fence (mid-stream) renders as a code block so far.

var S = {
  p: 'margin:0 0 8px 0;line-height:1.6;word-break:break-word;',
  h: 'margin:8px 0;font-weight:bold;line-height:1.4;',
  pre: 'margin:6px 0 10px 0;padding:8px 10px;background:#1f2430;color:#e6e6e6;border-radius:6px;' +
    'font-family:Menlo,Consolas,monospace;font-size:13px;line-height:1.5;white-space:pre-wrap;word-break:break-all;',
  lang: 'display:block;color:#8a93a6;font-size:11px;margin-bottom:4px;',
  code: 'padding:1px 4px;background:#f0f1f4;color:#c7254e;border-radius:3px;font-family:Menlo,Consolas,monospace;font-size:0.92em;',
  quote: 'margin:0 0 8px 0;padding:2px 0 2px 10px;border-left:3px solid #d0d4dc;color:#5c6270;',
  list: 'margin:0 0 8px 0;padding-left:20px;',
  li: 'margin:2px 0;line-height:1.6;',
  a: 'color:#2f6fde;text-decoration:underline;',
}
var HEADING_SIZE = ['', '20px', '18px', '16px', '15px', '15px', '15px']

// rich-text text nodes decode HTML entities on both platforms; escaping `&` keeps text exact.
function text(t) {
  return { type: 'text', text: String(t).replace(/&/g, '&amp;') }
}
function node(name, style, children) {
  return { name: name, attrs: { style: style }, children: children || [] }
}

// Inline: `code`, **bold**, __bold__, [text](url); everything else is text.
export function renderInline(src) {
  var out = []
  var re = /`([^`\n]+)`|\*\*([^*\n]+?)\*\*|__([^_\n]+?)__|\[([^\]\n]+)\]\(([^)\s]+)\)/g
  var last = 0
  var m
  while ((m = re.exec(src))) {
    if (m.index > last) out.push(text(src.slice(last, m.index)))
    if (m[1] !== undefined) out.push(node('code', S.code, [text(m[1])]))
    else if (m[2] !== undefined) out.push(node('strong', 'font-weight:bold;', renderInline(m[2])))
    else if (m[3] !== undefined) out.push(node('strong', 'font-weight:bold;', renderInline(m[3])))
    else out.push(node('span', S.a, [text(m[4])]))
    last = re.lastIndex
  }
  if (last < src.length) out.push(text(src.slice(last)))
  return out
}

function inlineWithBreaks(lines) {
  var out = []
  for (var i = 0; i < lines.length; i++) {
    if (i > 0) out.push(node('br', '', []))
    out = out.concat(renderInline(lines[i]))
  }
  return out
}

export function renderMarkdown(src) {
  var lines = String(src || '').replace(/\r\n?/g, '\n').split('\n')
  var blocks = []
  var para = []
  var i = 0

  function flushPara() {
    if (para.length) blocks.push(node('div', S.p, inlineWithBreaks(para)))
    para = []
  }

  while (i < lines.length) {
    var l = lines[i]
    var fence = /^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/.exec(l)
    if (fence) {
      flushPara()
      var marker = fence[1]
      var code = []
      i++
      while (i < lines.length && lines[i].trim().indexOf(marker) !== 0) {
        code.push(lines[i])
        i++
      }
      i++ // the closing fence (or past the end when still streaming)
      var children = []
      if (fence[2]) children.push(node('span', S.lang, [text(fence[2])]))
      children.push(text(code.join('\n')))
      blocks.push(node('pre', S.pre, children))
      continue
    }
    if (/^\s*$/.test(l)) {
      flushPara()
      i++
      continue
    }
    var h = /^(#{1,6})\s+(.*)$/.exec(l)
    if (h) {
      flushPara()
      blocks.push(node('div', S.h + 'font-size:' + HEADING_SIZE[h[1].length] + ';', renderInline(h[2].replace(/\s+#+\s*$/, ''))))
      i++
      continue
    }
    if (/^\s*>/.test(l)) {
      flushPara()
      var q = []
      while (i < lines.length && /^\s*>/.test(lines[i])) {
        q.push(lines[i].replace(/^\s*>\s?/, ''))
        i++
      }
      blocks.push(node('div', S.quote, inlineWithBreaks(q)))
      continue
    }
    var bullet = /^\s*([-*+]|\d{1,9}[.)])\s+/.exec(l)
    if (bullet) {
      flushPara()
      var ordered = /\d/.test(bullet[1])
      var items = []
      while (i < lines.length) {
        var b = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/.exec(lines[i])
        if (!b || /\d/.test(b[1]) !== ordered) break
        items.push(node('li', S.li, renderInline(b[2])))
        i++
      }
      blocks.push(node(ordered ? 'ol' : 'ul', S.list, items))
      continue
    }
    para.push(l)
    i++
  }
  flushPara()
  return blocks
}

// The text a reader sees, for tests: the text nodes in order (entities undone).
export function plainText(nodes) {
  var out = ''
  for (var i = 0; i < nodes.length; i++) {
    var n = nodes[i]
    if (n.type === 'text') out += n.text.replace(/&amp;/g, '&')
    else if (n.children) out += plainText(n.children)
  }
  return out
}
