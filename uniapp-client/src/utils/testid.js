// uni-h5 renders <input> as <uni-input data-testid=…><div>…<input></div></uni-input>, so a
// test's `fill('[data-testid=chat-input]')` would hit the wrapper, which is not editable.
// Move the attribute onto the real <input>/<textarea> (H5 only; a no-op in the mini-program).
export function moveInputTestIds() {
  // #ifdef H5
  if (typeof document === 'undefined') return
  var wrappers = document.querySelectorAll('uni-input[data-testid], uni-textarea[data-testid]')
  for (var i = 0; i < wrappers.length; i++) {
    var w = wrappers[i]
    var inner = w.querySelector('input, textarea')
    if (inner) {
      inner.setAttribute('data-testid', w.getAttribute('data-testid'))
      w.removeAttribute('data-testid')
    }
  }
  // #endif
}
