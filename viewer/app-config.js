/** bmd-node's OHIF configuration: one DICOMweb data source on the page's own origin (Orthanc behind our server).
 *
 * Served as /app-config.js by service/offline/viewer/server.py in place of the demo configuration of
 * @ohif/app's dist. Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) answers QIDO-RS with includefield and
 * WADO-RS metadata, frames and bulk data; it has no static-WADO layout.
 */
const origin = window.location.origin;

window.config = {
  name: 'bmd-node/viewer/app-config.js',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc DICOMweb (same origin)',
        name: 'orthanc',
        wadoUriRoot: `${origin}/dicom-web`,
        qidoRoot: `${origin}/dicom-web`,
        wadoRoot: `${origin}/dicom-web`,
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
