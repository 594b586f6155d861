// hutong GraphQL explorer bootstrap (our own file, not from npm).
// Loaded as a separate same-origin script so the page's CSP can keep script-src 'self'.
// The endpoint and the default query come from data-attributes of #graphiql, set by
// gateway/explorer.py; no value is ever interpolated into script text.
(function () {
  'use strict';

  var root = document.getElementById('graphiql');
  if (!root || !window.React || !window.ReactDOM || !window.GraphiQL) {
    if (root) {
      root.textContent = 'The GraphQL explorer failed to load its scripts.';
    }
    return;
  }

  var endpoint = root.getAttribute('data-endpoint') || window.location.pathname;
  var defaultQuery = root.getAttribute('data-default-query') || '';

  function fetcher(graphQLParams, opts) {
    var headers = {
      'Content-Type': 'application/json',
      'Accept': 'application/graphql-response+json, application/json'
    };
    var extra = (opts && opts.headers) || {};
    Object.keys(extra).forEach(function (name) {
      headers[name] = extra[name];
    });
    return fetch(endpoint, {
      method: 'POST',
      headers: headers,
      body: JSON.stringify(graphQLParams),
      credentials: 'same-origin'
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (err) {
          return {
            errors: [{
              message: 'Non-JSON response (HTTP ' + response.status + '): ' + text.slice(0, 500)
            }]
          };
        }
      });
    });
  }

  root.textContent = '';
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true
    })
  );
})();
