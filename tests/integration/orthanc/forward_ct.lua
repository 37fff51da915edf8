-- Orthanc auto-routing for bmd-node tests: forward every stable CT series to the node.
-- The modality alias "bmdnode" is declared in DicomModalities of the Orthanc configuration.
-- (Lua's SendToModality() takes an instance id in Orthanc 1.10; the REST store job takes a series.)
function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'CT' then
      print('bmd-node test: forwarding stable CT series ' .. seriesId)
      RestApiPost('/modalities/bmdnode/store',
                  '{"Resources": ["' .. seriesId .. '"], "Synchronous": false}')
   end
end
